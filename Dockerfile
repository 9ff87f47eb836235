# syntax=docker/dockerfile:1
#
# The TorrentGuard tracker. Build from the workspace root:
#   docker build -t torrentguard-tracker .
# or let docker-compose.yml do it. See tracker-server/README.md.

# ---- build ----------------------------------------------------------------------------------
# rust:slim already carries gcc and libc6-dev, which is all aws-lc-sys (rustls' crypto) and the
# bundled SQLite need.
# Base images are referenced by tag, not digest: this repository was written where no registry
# can be reached, so no digest could be read from the registry itself, and a digest copied from
# elsewhere would be unverified. Pin them when building for release: run
#   docker buildx imagetools inspect rust:1-slim-bookworm      (and debian:bookworm-slim)
# and append the printed digest, e.g. `FROM rust:1-slim-bookworm@sha256:<digest> AS builder`.
FROM rust:1-slim-bookworm AS builder
WORKDIR /src
# The whole workspace: cargo needs every member's manifest even to build one package.
COPY . .
# Cache mounts keep the registry and the target directory between builds; the binary is copied
# out of the cache in the same step, since the mount is gone afterwards.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p torrentguard-tracker --bin torrentguard-tracker \
 && install -D -m 0755 target/release/torrentguard-tracker /out/torrentguard-tracker

# ---- run ------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# A fixed, unprivileged uid so a bind-mounted data directory can be chowned to match.
RUN groupadd --system --gid 10001 torrentguard \
 && useradd --system --uid 10001 --gid torrentguard --home-dir /var/lib/torrentguard \
        --shell /usr/sbin/nologin torrentguard \
 && install -d -m 0700 -o torrentguard -g torrentguard /var/lib/torrentguard
COPY --from=builder /out/torrentguard-tracker /usr/local/bin/torrentguard-tracker

# The identity (cert.pem, key.pem) and tracker.db live here; a new named volume is initialised
# from this directory, ownership and mode included.
VOLUME ["/var/lib/torrentguard"]
# [::] with IPV6_V6ONLY off (the tracker clears it itself): IPv6 and IPv4 on one socket.
ENV TORRENTGUARD_TRACKER_DATA_DIR=/var/lib/torrentguard \
    TORRENTGUARD_TRACKER_LISTEN=[::]:8443 \
    RUST_LOG=info
EXPOSE 8443
USER torrentguard:torrentguard

# No curl in a slim image, and curl could not pin the fingerprint anyway: the binary probes its
# own /healthz over TLS, pinning the certificate from the data directory (same environment).
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s --retries=3 \
    CMD ["torrentguard-tracker", "healthcheck", "--timeout", "5"]
# The tracker finishes in-flight requests and closes the database on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["torrentguard-tracker"]
