# Tidegate's container image: built in a Rust image, run from a slim Debian one as a non-root
# user on a read-only root filesystem. The entrypoint is the README's first command's binary
# with no argument: the configuration is /etc/tidegate/tidegate.yml when one is mounted there
# (deploy/kubernetes mounts a ConfigMap), else the embedded default.
#
#   docker build -t tidegate .
#   docker run --rm --read-only --tmpfs /var/lib/tidegate -p 1935:1935 -p 8554:8554 \
#     -p 8888:8888 -p 8889:8889 -p 8189:8189/udp -p 8890:8890/udp tidegate

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tidegate \
    && install -D -m 0755 target/release/tidegate /out/tidegate

FROM debian:bookworm-slim
# libopus is loaded at run time by the audio bridge (Opus <-> AAC); ca-certificates for
# pulled https/rtmps/rtsps sources, webhooks and JWKS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libopus0 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tidegate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tidegate --no-create-home tidegate \
    && install -d -o 10001 -g 10001 /var/lib/tidegate /etc/tidegate
COPY --from=build /out/tidegate /usr/local/bin/tidegate
# The working directory holds what the server writes (stream keys, recordings, HLS files when
# hlsDirectory is set): mount a volume or a tmpfs there when the root filesystem is read-only.
WORKDIR /var/lib/tidegate
VOLUME ["/var/lib/tidegate"]
USER 10001:10001
# RTMP, RTMPS, RTSP, RTSPS, RTP/RTCP (RTSP over UDP), HLS, WebRTC (HTTP, ICE UDP, ICE TCP),
# SRT, API, metrics: the embedded configuration's ports.
EXPOSE 1935/tcp 1936/tcp 8554/tcp 8322/tcp 8000/udp 8001/udp 8888/tcp 8889/tcp 8189/udp 8890/udp 9997/tcp 9998/tcp
ENTRYPOINT ["/usr/local/bin/tidegate"]
