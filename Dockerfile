# Multi-stage build: a release binary on a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY lua ./lua
COPY migrations ./migrations
# The storefront page is compiled into the binary (src/http/web.rs include_str!s web/).
COPY web ./web
RUN cargo build --release --locked && strip target/release/flashsale

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 flashsale
COPY --from=build /src/target/release/flashsale /usr/local/bin/flashsale
USER flashsale
ENV FLASHSALE_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=2s --retries=12 CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["flashsale"]
CMD ["serve"]
