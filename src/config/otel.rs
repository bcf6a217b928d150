//! Traces: the OpenTelemetry settings, by their standard variable names.

use std::time::Duration;

use clap::Args;

/// The OpenTelemetry settings this service honours, by their standard variable names. Traces
/// are off unless an OTLP endpoint is set; `OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none` turn them off again. Other OTEL_* variables (headers, batch
/// queue, sampler, resource attributes) are read by the OpenTelemetry SDK itself.
#[derive(Debug, Clone, Default, Args)]
pub struct OtelConfig {
    /// OTLP/HTTP base URL (e.g. http://collector:4318); traces go to `<it>/v1/traces`, as
    /// protobuf. Unset (the default): no traces. Its value is never shown (it may carry
    /// credentials).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        hide_env_values = true,
        global = true
    )]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// OTLP/HTTP URL for traces, used as it is (wins over the base URL).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        hide_env_values = true,
        global = true
    )]
    pub otel_exporter_otlp_traces_endpoint: Option<String>,

    /// OTLP protocol; only `http/protobuf` (the default) is supported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", global = true)]
    pub otel_exporter_otlp_protocol: Option<String>,

    /// OTLP protocol for traces (wins over OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", global = true)]
    pub otel_exporter_otlp_traces_protocol: Option<String>,

    /// Milliseconds one export may take (default 10000).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", global = true)]
    pub otel_exporter_otlp_timeout: Option<String>,

    /// Milliseconds one trace export may take (wins over OTEL_EXPORTER_OTLP_TIMEOUT).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", global = true)]
    pub otel_exporter_otlp_traces_timeout: Option<String>,

    /// `otlp` (the default) or `none`.
    #[arg(long, env = "OTEL_TRACES_EXPORTER", global = true)]
    pub otel_traces_exporter: Option<String>,

    /// `true` turns every OpenTelemetry export off. Other OTEL_* variables (OTEL_BSP_*,
    /// OTEL_TRACES_SAMPLER, OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS) are read by the
    /// OpenTelemetry SDK itself, as the specification says (docs/OPERATIONS.md, "Traces").
    #[arg(long, env = "OTEL_SDK_DISABLED", global = true)]
    pub otel_sdk_disabled: Option<String>,

    /// The `service.name` of the spans.
    #[arg(
        long,
        env = "OTEL_SERVICE_NAME",
        default_value = "flashsale",
        global = true
    )]
    pub otel_service_name: String,
}

/// Where and how traces are exported (`OtelConfig::traces`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceExport {
    /// The full OTLP/HTTP traces URL.
    pub endpoint: String,
    pub service_name: String,
    /// Bound of one export request.
    pub timeout: Duration,
    /// Settings ignored, to be logged once logging is up.
    pub warnings: Vec<String>,
}

impl TraceExport {
    /// The endpoint as the logs may show it: scheme, host, port and path, without credentials
    /// or query.
    pub fn endpoint_for_logs(&self) -> String {
        match self.endpoint.parse::<axum::http::Uri>() {
            Ok(uri) => format!(
                "{}://{}{}{}",
                uri.scheme_str().unwrap_or("?"),
                uri.host().unwrap_or("?"),
                uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default(),
                uri.path()
            ),
            Err(_) => "(unparsable)".into(),
        }
    }
}

impl OtelConfig {
    /// The trace export these settings ask for: `None` when traces are off; an error for a
    /// setting this service cannot honour (a gRPC or JSON protocol, an endpoint that is not an
    /// http(s) URL). Unknown exporter names and bad timeouts are ignored with a warning, as the
    /// OpenTelemetry specification says.
    pub fn traces(&self) -> Result<Option<TraceExport>, String> {
        // Empty variables count as unset, as the OpenTelemetry specification says.
        let set = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        if set(&self.otel_sdk_disabled).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let mut warnings = Vec::new();
        if let Some(exporters) = set(&self.otel_traces_exporter) {
            let names: Vec<String> = exporters
                .split(',')
                .map(|e| e.trim().to_ascii_lowercase())
                .collect();
            if names.iter().any(|e| e == "none") {
                return Ok(None);
            }
            // Unknown values are ignored with a warning (the specification's rule for enums).
            for other in names.iter().filter(|e| *e != "otlp") {
                warnings.push(format!(
                    "OTEL_TRACES_EXPORTER={other:?} is not supported and is ignored (otlp or none)"
                ));
            }
        }
        let endpoint = match (
            set(&self.otel_exporter_otlp_traces_endpoint),
            set(&self.otel_exporter_otlp_endpoint),
        ) {
            (Some(traces), _) => traces,
            // The signal's path goes after the base's path, before any query.
            (None, Some(base)) => match base.split_once('?') {
                Some((path, query)) => {
                    format!("{}/v1/traces?{query}", path.trim_end_matches('/'))
                }
                None => format!("{}/v1/traces", base.trim_end_matches('/')),
            },
            (None, None) => return Ok(None),
        };
        // Never echo credentials (`user:pass@`, `?api-key=...`) into a message.
        // A user part alone may be a key too: not shown at all.
        let shown = if endpoint.contains('@') {
            "(with credentials, not shown)".to_string()
        } else {
            format!("{:?}", super::url::redact_url(&endpoint))
        };
        let uri: axum::http::Uri = endpoint
            .parse()
            .map_err(|e| format!("OTLP traces endpoint {shown}: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!(
                "OTLP traces endpoint {shown} must be an http:// or https:// URL"
            ));
        }
        let protocol = set(&self.otel_exporter_otlp_traces_protocol)
            .or_else(|| set(&self.otel_exporter_otlp_protocol));
        if let Some(p) = protocol.filter(|p| p != "http/protobuf") {
            return Err(format!(
                "OTLP protocol {p:?} is not supported: traces are sent as http/protobuf \
                 (a collector's port 4318)"
            ));
        }
        let timeout = match set(&self.otel_exporter_otlp_traces_timeout)
            .or_else(|| set(&self.otel_exporter_otlp_timeout))
        {
            None => Duration::from_secs(10),
            Some(ms) => match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    warnings.push(format!(
                        "OTLP timeout {ms:?} is not a positive number of milliseconds; \
                         using 10000"
                    ));
                    Duration::from_secs(10)
                }
            },
        };
        let service_name = match self.otel_service_name.trim() {
            "" => "flashsale".to_string(),
            name => name.to_string(),
        };
        Ok(Some(TraceExport {
            endpoint,
            service_name,
            timeout,
            warnings,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn otel(vars: &[(&str, &str)]) -> OtelConfig {
        let mut c = OtelConfig {
            otel_service_name: "flashsale".into(),
            ..OtelConfig::default()
        };
        for (k, v) in vars {
            let v = Some(v.to_string());
            match *k {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => c.otel_exporter_otlp_endpoint = v,
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => c.otel_exporter_otlp_traces_endpoint = v,
                "OTEL_EXPORTER_OTLP_PROTOCOL" => c.otel_exporter_otlp_protocol = v,
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" => c.otel_exporter_otlp_traces_protocol = v,
                "OTEL_EXPORTER_OTLP_TIMEOUT" => c.otel_exporter_otlp_timeout = v,
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" => c.otel_exporter_otlp_traces_timeout = v,
                "OTEL_TRACES_EXPORTER" => c.otel_traces_exporter = v,
                "OTEL_SDK_DISABLED" => c.otel_sdk_disabled = v,
                other => panic!("{other}"),
            }
        }
        c
    }

    fn endpoint(vars: &[(&str, &str)]) -> Option<String> {
        otel(vars).traces().unwrap().map(|t| t.endpoint)
    }

    #[test]
    fn traces_are_off_unless_an_endpoint_is_set() {
        assert_eq!(endpoint(&[]), None);
        assert_eq!(endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]), None);
        assert_eq!(endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]), None);
        let c = crate::config::Config::defaults();
        assert_eq!(c.otel.otel_service_name, "flashsale");
    }

    #[test]
    fn the_traces_endpoint_follows_the_otlp_conventions() {
        let base = "OTEL_EXPORTER_OTLP_ENDPOINT";
        let traces = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
        for (b, want) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "https://otel.example/base",
                "https://otel.example/base/v1/traces",
            ),
            ("http://c:4318/?k=v", "http://c:4318/v1/traces?k=v"),
        ] {
            assert_eq!(endpoint(&[(base, b)]).as_deref(), Some(want), "{b}");
        }
        // The signal's own URL is used as it is, and wins over the base.
        assert_eq!(
            endpoint(&[(base, "http://a:4318"), (traces, "http://b:9999/custom")]).as_deref(),
            Some("http://b:9999/custom")
        );
        assert_eq!(
            endpoint(&[(base, ""), (traces, "http://b:4318")]).as_deref(),
            Some("http://b:4318")
        );
        for bad in ["collector:4318", "ftp://c/", "http://", "not a url"] {
            assert!(otel(&[(base, bad)]).traces().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_otel_switches_turn_traces_off() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_SDK_DISABLED", "True"),
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_TRACES_EXPORTER", "NONE"),
        ] {
            assert_eq!(endpoint(&[base, off]), None, "{off:?}");
        }
        for on in [
            ("OTEL_SDK_DISABLED", "false"),
            ("OTEL_SDK_DISABLED", ""),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ] {
            assert!(endpoint(&[base, on]).is_some(), "{on:?}");
        }
        // Unknown values are ignored with a warning, as the specification says.
        let t = otel(&[base, ("OTEL_TRACES_EXPORTER", "zipkin")])
            .traces()
            .unwrap()
            .unwrap();
        assert_eq!(t.warnings.len(), 1);
    }

    #[test]
    fn only_http_protobuf_is_spoken() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert!(endpoint(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).is_some());
        for p in ["grpc", "http/json"] {
            assert!(
                otel(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", p)])
                    .traces()
                    .is_err()
            );
            assert!(
                otel(&[base, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p)])
                    .traces()
                    .is_err()
            );
        }
        // The traces' own setting wins.
        assert!(
            otel(&[
                base,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ])
            .traces()
            .unwrap()
            .is_some()
        );
        // And a bad one stops the start (validate), rather than sending to the wrong port.
        let mut c = crate::config::Config::defaults();
        c.otel = otel(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_export_timeout_is_in_milliseconds() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let timeout = |vars: &[(&str, &str)]| {
            let mut all = vec![base];
            all.extend_from_slice(vars);
            otel(&all).traces().unwrap().unwrap()
        };
        assert_eq!(timeout(&[]).timeout, Duration::from_secs(10));
        assert_eq!(
            timeout(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")]).timeout,
            Duration::from_millis(2500)
        );
        assert_eq!(
            timeout(&[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700")
            ])
            .timeout,
            Duration::from_millis(700)
        );
        for bad in ["0", "-1", "10s", "18446744073709551616"] {
            let t = timeout(&[("OTEL_EXPORTER_OTLP_TIMEOUT", bad)]);
            assert_eq!(t.timeout, Duration::from_secs(10), "{bad}");
            assert_eq!(t.warnings.len(), 1, "{bad}");
        }
    }

    #[test]
    fn the_endpoint_is_logged_without_credentials() {
        let t = otel(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://user:s3cret@otel.example:4318/base?token=s3cret",
        )])
        .traces()
        .unwrap()
        .unwrap();
        assert_eq!(
            t.endpoint_for_logs(),
            "https://otel.example:4318/base/v1/traces"
        );
        let e = otel(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://user:s3cret@x")])
            .traces()
            .unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn an_empty_service_name_is_the_default() {
        let mut c = otel(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        c.otel_service_name = " ".into();
        assert_eq!(c.traces().unwrap().unwrap().service_name, "flashsale");
    }
}
