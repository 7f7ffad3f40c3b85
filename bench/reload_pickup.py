#!/usr/bin/env python3
"""How long from writing config.yaml to the new rule serving (file watcher pickup).

Usage: cargo build --release && python3 bench/reload_pickup.py
Loopback only; ports 18080/18081/19090; 20 edits (half in place, half renamed into place).
"""
import os, statistics, subprocess, tempfile, time, urllib.error, urllib.request
BIN=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "tollgate")
cfg=os.path.join(tempfile.mkdtemp(prefix="tollgate-pickup-"), "config.yaml")
base='''server: {listen: ["127.0.0.1:18080"], admin: "127.0.0.1:19090"}
upstreams: {up: {servers: ["127.0.0.1:18081"]}}
rules:
  - {name: base, match: {path: /base}, upstream: up}
'''
open(cfg,"w").write(base)
up=subprocess.Popen(["python3","-m","http.server","18081","--bind","127.0.0.1"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
gw=subprocess.Popen([BIN,"run","-c",cfg],stderr=subprocess.DEVNULL)
def routed(path):
    try:
        r=urllib.request.urlopen("http://127.0.0.1:18080"+path, timeout=2)
        h=r.headers
    except urllib.error.HTTPError as e:
        h=e.headers
    except Exception:
        return False
    return h.get("ratelimit-policy") is not None
time.sleep(1.5)
lat=[]
for i in range(20):
    text=base+f"  - {{name: r{i}, match: {{path: /r{i}}}, upstream: up, limits: [{{name: l{i}, key: ip, rate: 100/second}}]}}\n"
    if i%2:
        open(cfg+".tmp","w").write(text); t0=time.monotonic(); os.rename(cfg+".tmp",cfg)
    else:
        t0=time.monotonic(); open(cfg,"w").write(text)
    while not routed(f"/r{i}"):
        time.sleep(0.002)
        if time.monotonic()-t0>5: print("timeout"); break
    lat.append((time.monotonic()-t0)*1000)
    time.sleep(0.2)
gw.kill(); up.kill(); gw.wait(); up.wait()
lat.sort()
print(f"pickup latency over {len(lat)} edits (ms): min {lat[0]:.0f} median {statistics.median(lat):.0f} max {lat[-1]:.0f}")
