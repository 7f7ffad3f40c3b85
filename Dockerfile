# Multi-stage build: compile with the Rust toolchain (plus cmake for Pingora's
# zlib-ng), run from a slim image as a non-root user.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tollgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tollgate
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
COPY docker/config.yaml /etc/tollgate/config.yaml
ENV TOLLGATE_CONFIG=/etc/tollgate/config.yaml
USER tollgate
EXPOSE 8080 9090
ENTRYPOINT ["tollgate"]
CMD ["run"]
