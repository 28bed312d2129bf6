# syntax=docker/dockerfile:1
# The mission-control server. Build: docker build -t mission-control .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mission-control-server --bin mission-control

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home mission-control
COPY --from=build /src/target/release/mission-control /usr/local/bin/mission-control
USER mission-control
ENV MC_LISTEN=0.0.0.0:50051
EXPOSE 50051
STOPSIGNAL SIGTERM
ENTRYPOINT ["mission-control"]
