# The mission-control server. Build: docker build -t mission-control .
# (No `# syntax=` line: BuildKit would fetch a frontend image for it, which
# fails on machines that reach only a registry mirror.)

FROM rust:1.95-bookworm AS build
# The image's toolchain as is: rust-toolchain.toml would have rustup fetch
# rustfmt and clippy, which a release build does not need.
ENV RUSTUP_TOOLCHAIN=1.95.0
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
