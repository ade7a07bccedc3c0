# callback-bridge container image: build stage + a runtime stage that holds only the static
# binary (scripts/build-static.sh). The runtime image has no shell: shutdown is by signal,
# and the health check runs the binary itself (`callback-bridge health`), so no curl is needed.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The commit shown by `callback-bridge --version` (the .git folder is not copied into the image).
ARG CALLBACK_BRIDGE_GIT_COMMIT=unknown
ENV CALLBACK_BRIDGE_GIT_COMMIT=${CALLBACK_BRIDGE_GIT_COMMIT}
# Static release build (glibc linked in): the image needs no C runtime at all.
RUN cp "$(scripts/build-static.sh)" /usr/local/bin/callback-bridge

# No C runtime, no shell, runs as uid 65532 ("nonroot"); /etc/hosts, nsswitch.conf and CA
# certificates are there for name lookups (the TLS roots are compiled into the binary anyway).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /usr/local/bin/callback-bridge /usr/local/bin/callback-bridge
# Configuration comes from CALLBACK_BRIDGE_* variables (see config/bridge.toml). The listener
# stays on loopback: the agent shares the pod's / container's network namespace.
ENV CALLBACK_BRIDGE_LISTEN=127.0.0.1:8080 \
    CALLBACK_BRIDGE_LOG_FORMAT=json
# 65532 is the "nonroot" user of the distroless image; numeric so any runtime can resolve it.
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=3s --start-period=2s --retries=3 \
  CMD ["/usr/local/bin/callback-bridge", "health"]
ENTRYPOINT ["/usr/local/bin/callback-bridge"]
CMD ["serve"]
