# Dory's image: the static dory, doryd and dory-csi binaries, nothing else.
#   docker build -t ghcr.io/dory-rs/dory:0.1.0 .
# The DaemonSet runs `dory install`, the Deployment runs `doryd` (deploy/);
# the CSI manifests run `dory-csi` (deploy/csi/).

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends file && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# DORY_COMMIT stamps --version when the build context has no .git.
ARG DORY_COMMIT=unknown
ENV DORY_COMMIT=${DORY_COMMIT}
RUN scripts/build-release && mkdir /out \
 && cp target/$(rustc -vV | sed -n 's/^host: //p')/release/dory /out/ \
 && cp target/$(rustc -vV | sed -n 's/^host: //p')/release/doryd /out/ \
 && cp target/$(rustc -vV | sed -n 's/^host: //p')/release/dory-csi /out/

FROM scratch
COPY --from=build /out/dory /out/doryd /out/dory-csi /usr/local/bin/
USER 0
ENTRYPOINT ["/usr/local/bin/doryd"]
