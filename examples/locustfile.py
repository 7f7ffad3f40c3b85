"""Locust load test for the tollgate demo: vehicles posting positions.

    pip install locust
    locust -f examples/locustfile.py --host http://127.0.0.1:8080 \
        --users 50 --spawn-rate 10 --run-time 1m --headless

Each simulated user is one vehicle on a random walk around Berlin, posting its
position about once a second and now and then reading the fleet. 429 answers
from the gateway are counted as successes of the limiter, not as failures, and
show up under their own name in Locust's statistics. Point it only at
gateways you run (loopback by default).
"""

import math
import random
import uuid

from locust import HttpUser, between, task


class Vehicle(HttpUser):
    wait_time = between(0.5, 1.5)

    def on_start(self):
        self.vehicle_id = f"locust-{uuid.uuid4().hex[:8]}"
        self.lat = 52.52 + random.uniform(-0.05, 0.05)
        self.lon = 13.40 + random.uniform(-0.08, 0.08)
        self.heading = random.uniform(0, 2 * math.pi)
        self.speed = random.uniform(20, 80)

    def step(self):
        self.heading += random.uniform(-0.3, 0.3)
        self.speed = min(130.0, max(0.0, self.speed + random.uniform(-5, 5)))
        km = self.speed / 3600.0
        self.lat = max(-90.0, min(90.0, self.lat + km / 111.0 * math.cos(self.heading)))
        self.lon = max(-180.0, min(180.0, self.lon + km / 68.0 * math.sin(self.heading)))

    @task(10)
    def post_position(self):
        self.step()
        event = {"id": self.vehicle_id, "lat": self.lat, "lon": self.lon, "speed": self.speed}
        with self.client.post("/events", json=event, catch_response=True) as response:
            if response.status_code == 202:
                response.success()
            elif response.status_code == 429:
                # The gateway doing its job: report it apart, not as an error.
                response.request_meta["name"] = "/events (429 rate limited)"
                response.success()
            else:
                response.failure(f"unexpected {response.status_code}: {response.text[:200]}")

    @task(1)
    def read_fleet(self):
        with self.client.get("/vehicles", catch_response=True) as response:
            if response.status_code in (200, 429):
                response.success()
            else:
                response.failure(f"unexpected {response.status_code}")
