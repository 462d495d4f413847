use std::path::Path;

use super::*;

fn yaml(text: &str) -> Result<ConfigLayer, ConfigError> {
    parse_yaml(Path::new("/etc/tokenwatch.yaml"), text)
}

#[test]
fn defaults_watch_both_token_paths_and_print_json() {
    let config = Config::resolve(ConfigLayer::default(), &ServiceEnv::default(), "node-a").expect("defaults");
    assert_eq!(config.token_paths, [PathBuf::from(DEFAULT_TOKEN_PATH), PathBuf::from(DEFAULT_TOKEN_PATH_RUN)]);
    assert!(config.api_servers.is_empty());
    assert_eq!(config.stdout, StdoutFormat::Json);
    assert_eq!(config.node_name, "node-a");
    assert_eq!(config.rescan_interval, Duration::from_secs(DEFAULT_RESCAN_INTERVAL_SECONDS));
}

#[test]
fn flags_win_over_the_file_and_env_endpoint_is_added() {
    let file = yaml("stdout: text\nnode-name: from-file\napi-servers: ['10.0.0.1']\nrescan-interval-seconds: 9\n")
        .expect("valid yaml");
    let flags = ConfigLayer { stdout: Some(StdoutFormat::None), ..ConfigLayer::default() };
    let env = ServiceEnv { host: Some("fd00::1".into()), port: Some("6443".into()), ..ServiceEnv::default() };
    let config = Config::resolve(flags.over(file), &env, "host").expect("valid");
    assert_eq!(config.stdout, StdoutFormat::None);
    assert_eq!(config.node_name, "from-file");
    assert_eq!(config.rescan_interval, Duration::from_secs(9));
    let servers: Vec<String> = config.api_servers.iter().map(ToString::to_string).collect();
    assert_eq!(servers, ["10.0.0.1:443", "[fd00::1]:6443"]);
}

#[test]
fn file_errors_name_file_line_and_column() {
    let error = yaml("stdout: json\napi-servers:\n  - 10.0.0.1\n  - not-an-ip\n").expect_err("bad endpoint");
    let text = error.to_string();
    assert!(text.starts_with("/etc/tokenwatch.yaml:4:5: "), "{text}");
    assert!(text.contains("`not-an-ip` is not an IP address"), "{text}");

    let error = yaml("stdout: json\ncolour: blue\n").expect_err("unknown key");
    let text = error.to_string();
    assert!(text.starts_with("/etc/tokenwatch.yaml:2:"), "{text}");
    assert!(text.contains("unknown field `colour`"), "{text}");

    let error = yaml("stdout: loud\n").expect_err("bad enum");
    assert!(error.to_string().starts_with("/etc/tokenwatch.yaml:1:"), "{error}");
}

#[test]
fn values_in_the_file_are_checked_where_they_stand() {
    let cases = [
        (
            "stdout: json\ntoken-paths:\n  - /ok/token\n  - secrets/token\n",
            "4:5",
            "token path `secrets/token` is not absolute",
        ),
        ("ring-buffer-kib: 12\n", "1:18", "ring buffer size `12` KiB must be a power of two"),
        ("\nrescan-interval-seconds: 0\n", "2:", "expected a nonzero"),
    ];
    for (text, place, message) in cases {
        let error = yaml(text).expect_err(text).to_string();
        assert!(error.starts_with(&format!("/etc/tokenwatch.yaml:{place}")), "{error}");
        assert!(error.contains(message), "{error}");
    }
    let layer = yaml("ring-buffer-kib: 4\nrescan-interval-seconds: 3\n").expect("valid");
    let config = Config::resolve(layer, &ServiceEnv::default(), "h").expect("valid");
    assert_eq!((config.ring_buffer_bytes, config.rescan_interval), (4096, Duration::from_secs(3)));
}

#[test]
fn a_bad_service_environment_names_the_variables() {
    let env = ServiceEnv { host: Some("kubernetes".into()), ..ServiceEnv::default() };
    let error = Config::resolve(ConfigLayer::default(), &env, "h").expect_err("hostname");
    assert!(
        error.to_string().starts_with("KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT (kubernetes:443)"),
        "{error}"
    );
    assert!(error.to_string().contains("`kubernetes` is not an IP address"), "{error}");

    let env = ServiceEnv { host: Some("10.96.0.1".into()), port: Some("https".into()), ..ServiceEnv::default() };
    let error = Config::resolve(ConfigLayer::default(), &env, "h").expect_err("port");
    assert!(error.to_string().contains("`https` is not a port"), "{error}");
}

#[test]
fn user_token_paths_are_added_once() {
    let layer = ConfigLayer {
        token_paths: Some(
            ["/custom/token", DEFAULT_TOKEN_PATH, "/custom/token"].map(|p| p.parse().expect("absolute")).to_vec(),
        ),
        ..ConfigLayer::default()
    };
    let config = Config::resolve(layer, &ServiceEnv::default(), "h").expect("valid");
    assert_eq!(config.token_paths.len(), 3);
    assert_eq!(config.token_paths[2], PathBuf::from("/custom/token"));
}

#[test]
fn grpc_is_loopback_by_default_and_remote_needs_mutual_tls_or_consent() {
    let config = Config::resolve(ConfigLayer::default(), &ServiceEnv::default(), "h").expect("defaults");
    assert_eq!(config.grpc_listen.to_string(), "127.0.0.1:50051");
    assert_eq!(config.grpc_tls, None);
    let remote = || ConfigLayer { grpc_listen: Some("0.0.0.0:50051".parse().expect("addr")), ..ConfigLayer::default() };
    let error = Config::resolve(remote(), &ServiceEnv::default(), "h").expect_err("plaintext on the network");
    assert!(error.to_string().contains("--grpc-allow-insecure-remote"), "{error}");
    let allowed = ConfigLayer { grpc_allow_insecure_remote: true, ..remote() };
    assert!(Config::resolve(allowed, &ServiceEnv::default(), "h").is_ok());
    let tls = || ConfigLayer { grpc_tls_cert: Some("/c.pem".into()), grpc_tls_key: Some("/k.pem".into()), ..remote() };
    let error = Config::resolve(tls(), &ServiceEnv::default(), "h").expect_err("server TLS alone: anyone is served");
    assert!(error.to_string().contains("--grpc-tls-client-ca"), "{error}");
    let mutual = ConfigLayer { grpc_tls_client_ca: Some("/ca.pem".into()), ..tls() };
    assert!(Config::resolve(mutual, &ServiceEnv::default(), "h").is_ok());
    let half = ConfigLayer { grpc_tls_cert: Some("/c.pem".into()), ..ConfigLayer::default() };
    assert!(matches!(Config::resolve(half, &ServiceEnv::default(), "h"), Err(ConfigError::PartialTls)));
    let unix = ConfigLayer { grpc_listen: Some("unix:/run/tw.sock".parse().expect("unix")), ..tls() };
    assert!(matches!(Config::resolve(unix, &ServiceEnv::default(), "h"), Err(ConfigError::TlsOnUnix(_))));
}

#[test]
fn empty_file_is_an_empty_layer() {
    assert_eq!(yaml("\n").expect("empty"), ConfigLayer::default());
}

#[test]
fn otlp_is_off_by_default_and_checked_like_the_grpc_listener() {
    let resolve = |layer| Config::resolve(layer, &ServiceEnv::default(), "h");
    assert_eq!(resolve(ConfigLayer::default()).expect("defaults").otlp, None);
    let endpoint = |url: &str| ConfigLayer { otlp_endpoint: Some(url.parse().expect("url")), ..ConfigLayer::default() };

    let local = resolve(endpoint("http://127.0.0.1:4317")).expect("plaintext on loopback").otlp.expect("on");
    assert_eq!((local.endpoint.to_string(), local.ca, local.identity), ("http://127.0.0.1:4317".into(), None, None));

    let error = resolve(endpoint("http://collector.observability:4317")).expect_err("plaintext on the network");
    assert!(error.to_string().contains("--otlp-allow-insecure-remote"), "{error}");
    let allowed = ConfigLayer { otlp_allow_insecure_remote: true, ..endpoint("http://10.0.0.9:4317") };
    assert!(resolve(allowed).expect("consented").otlp.is_some());

    let mtls = ConfigLayer {
        otlp_ca: Some("/ca.pem".into()),
        otlp_cert: Some("/c.pem".into()),
        otlp_key: Some("/k.pem".into()),
        ..endpoint("https://collector:4317")
    };
    let config = resolve(mtls.clone()).expect("mtls").otlp.expect("on");
    assert_eq!(config.ca, Some(PathBuf::from("/ca.pem")));
    assert_eq!(config.identity.map(|i| (i.cert, i.key)), Some(("/c.pem".into(), "/k.pem".into())));
    assert!(resolve(endpoint("https://collector:4317")).is_ok(), "https with the system's roots");

    let half = ConfigLayer { otlp_key: None, ..mtls.clone() };
    assert!(matches!(resolve(half), Err(ConfigError::OtlpPartialIdentity)));
    let plaintext_with_ca = ConfigLayer { otlp_ca: Some("/ca.pem".into()), ..endpoint("http://127.0.0.1:4317") };
    assert!(matches!(resolve(plaintext_with_ca), Err(ConfigError::OtlpTlsWithoutHttps)));
    let no_endpoint = ConfigLayer { otlp_endpoint: None, ..mtls };
    assert!(matches!(resolve(no_endpoint), Err(ConfigError::OtlpTlsWithoutHttps)));
}

#[test]
fn otlp_settings_come_from_the_file_and_a_bad_url_names_its_place() {
    let layer = yaml("otlp-endpoint: https://collector:4317\notlp-ca: /etc/ca.pem\n").expect("valid");
    let config = Config::resolve(layer, &ServiceEnv::default(), "h").expect("valid").otlp.expect("on");
    assert_eq!(config.endpoint.to_string(), "https://collector:4317");
    let error = yaml("stdout: json\notlp-endpoint: collector:4317\n").expect_err("no scheme").to_string();
    assert!(error.starts_with("/etc/tokenwatch.yaml:2:"), "{error}");
    assert!(error.contains("is not http://HOST:PORT or https://HOST:PORT"), "{error}");
}

#[test]
fn the_node_name_says_where_it_came_from_and_node_name_is_the_fallback() {
    let resolve = |layer: ConfigLayer, env: ServiceEnv| Config::resolve(layer, &env, "host-a").expect("valid");
    let named = |name: &str| ConfigLayer { node_name: Some(name.into()), ..ConfigLayer::default() };
    let config = resolve(ConfigLayer::default(), ServiceEnv::default());
    assert_eq!((config.node_name.as_str(), config.node_name_source), ("host-a", "the host name"));
    let downward = ServiceEnv { node_name: Some("node-7".into()), ..ServiceEnv::default() };
    let config = resolve(ConfigLayer::default(), downward.clone());
    assert_eq!((config.node_name.as_str(), config.node_name_source), ("node-7", "NODE_NAME"));
    let config = resolve(named("flag-node"), downward);
    assert_eq!((config.node_name.as_str(), config.node_name_source), ("flag-node", "--node-name or the config file"));
    let env = ServiceEnv { tokenwatch_node_name: Some("env-node".into()), ..ServiceEnv::default() };
    let config = resolve(named("env-node"), env);
    assert_eq!(config.node_name_source, "TOKENWATCH_NODE_NAME");
}
