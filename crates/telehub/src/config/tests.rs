//! Config layering and the errors a user sees for bad values.

use super::*;

fn load(file: Option<&str>, env: &[(&str, &str)], overrides: &Overrides) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telehub.toml");
    if let Some(text) = file {
        std::fs::write(&path, text).unwrap();
    }
    let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    Config::load(file.map(|_| path.as_path()), env, overrides)
}

fn message(r: Result<Config, ConfigError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn embedded_default_toml_parses_to_config_default() {
    assert_eq!(load(None, &[], &Overrides::default()).unwrap(), Config::default());
}

#[test]
fn file_then_env_then_flags_override_in_order() {
    let file = "[mqtt]\nlisten = \"127.0.0.1:1001\"\nmax_inflight = 7\n";
    let c = load(Some(file), &[], &Overrides::default()).unwrap();
    assert_eq!((c.mqtt.listen.port(), c.mqtt.max_inflight), (1001, 7));

    let env = [("TELEHUB_MQTT__LISTEN", "127.0.0.1:1002"), ("TELEHUB_MQTT__MAX_INFLIGHT", "9")];
    let c = load(Some(file), &env, &Overrides::default()).unwrap();
    assert_eq!((c.mqtt.listen.port(), c.mqtt.max_inflight), (1002, 9));

    let flags = Overrides { mqtt_listen: Some("127.0.0.1:1003".parse().unwrap()), ..Overrides::default() };
    let c = load(Some(file), &env, &flags).unwrap();
    assert_eq!((c.mqtt.listen.port(), c.mqtt.max_inflight), (1003, 9));
}

#[test]
fn allow_anonymous_flag_sets_the_config_switch() {
    let flags = Overrides { allow_anonymous: true, ..Overrides::default() };
    assert!(load(None, &[], &flags).unwrap().auth.allow_anonymous);
    assert!(!load(None, &[], &Overrides::default()).unwrap().auth.allow_anonymous);
}

#[test]
fn unknown_key_is_named() {
    let m = message(load(Some("[mqtt]\nlisen = \"0.0.0.0:1\"\n"), &[], &Overrides::default()));
    assert!(m.contains("lisen"), "{m}");
    let m = message(load(Some("colour = 1\n"), &[], &Overrides::default()));
    assert!(m.contains("colour"), "{m}");
}

#[test]
fn wrong_type_is_named_with_its_key() {
    let m = message(load(Some("[mqtt]\nmax_inflight = \"many\"\n"), &[], &Overrides::default()));
    assert!(m.contains("mqtt.max_inflight"), "{m}");
    let m = message(load(Some("[mqtt]\nconnect_timeout = \"ten\"\n"), &[], &Overrides::default()));
    assert!(m.contains("mqtt.connect_timeout") && m.contains("invalid duration"), "{m}");
    let m = message(load(None, &[("TELEHUB_MQTT__LISTEN", "nowhere")], &Overrides::default()));
    assert!(m.contains("mqtt.listen"), "{m}");
    // the variable is named, not the line of Rust that merged it
    assert!(m.contains("environment variable TELEHUB_MQTT__LISTEN") && !m.contains(".rs:"), "{m}");
}

#[test]
fn unreadable_config_file_is_named() {
    let missing = Path::new("/nonexistent/telehub.toml");
    let m = Config::load(Some(missing), Vec::new(), &Overrides::default()).unwrap_err().to_string();
    assert!(m.contains("/nonexistent/telehub.toml"), "{m}");
}

#[test]
fn telehub_variables_outside_config_sections_are_ignored() {
    let env = [("TELEHUB_TEST_POSTGRES_URL", "postgres://x"), ("PATH", "/bin")];
    assert_eq!(load(None, &env, &Overrides::default()).unwrap(), Config::default());
}

#[test]
fn ingest_mappings_in_a_file_replace_the_default_list() {
    let file = "[[ingest.mappings]]\nfilter = \"plant/+/m\"\ndevice_level = 1\n";
    let c = load(Some(file), &[], &Overrides::default()).unwrap();
    assert_eq!(c.ingest.mappings.len(), 1);
    assert_eq!(c.ingest.mappings[0].filter.as_str(), "plant/+/m");
    // the other ingest keys keep their defaults
    assert_eq!(c.ingest.queue_capacity, telehub_hub::ingest::Config::default().queue_capacity);
}

#[test]
fn bad_ingest_mapping_and_limits_are_named() {
    let m = message(load(
        Some("[[ingest.mappings]]\nfilter = \"a/#/b\"\ndevice_level = 0\n"),
        &[],
        &Overrides::default(),
    ));
    assert!(m.contains("ingest.mappings") && m.contains("a/#/b"), "{m}");
    let m = message(load(Some("[[ingest.mappings]]\nfilter = \"a/+\"\n"), &[], &Overrides::default()));
    assert!(m.contains("device_level"), "{m}");
    let m = message(load(None, &[("TELEHUB_INGEST__QUEUE_CAPACITY", "lots")], &Overrides::default()));
    assert!(m.contains("ingest.queue_capacity"), "{m}");
    let c = load(None, &[("TELEHUB_HTTP__MAX_BODY_BYTES", "1024")], &Overrides::default()).unwrap();
    assert_eq!(c.http.max_body_bytes, 1024);
}

#[test]
fn http_listen_flag_sets_the_http_section() {
    let flags = Overrides { http_listen: Some("127.0.0.1:0".parse().unwrap()), ..Overrides::default() };
    assert_eq!(load(None, &[], &flags).unwrap().http.listen.port(), 0);
}

#[test]
fn store_section_takes_a_postgres_url_and_retention_from_env() {
    let env = [
        ("TELEHUB_STORE__URL", "postgres://telehub:secret@db:5432/telehub"),
        ("TELEHUB_STORE__RETENTION__MAX_AGE", "30d"),
        ("TELEHUB_STORE__RETENTION__MAX_BYTES", "1000000"),
    ];
    let c = load(None, &env, &Overrides::default()).unwrap();
    assert_eq!(c.store.url.as_deref(), Some("postgres://telehub:secret@db:5432/telehub"));
    assert_eq!(c.store.retention.max_age, Some(std::time::Duration::from_secs(30 * 86_400)));
    assert_eq!(c.store.retention.max_bytes, Some(1_000_000));
    let m = message(load(Some("[store]\nmax_commit_delay = \"soon\"\n"), &[], &Overrides::default()));
    assert!(m.contains("store.max_commit_delay"), "{m}");
}

#[test]
fn database_url_flag_overrides_store_url() {
    let env = [("TELEHUB_STORE__URL", "postgres://env@127.0.0.1/a")];
    let flags =
        Overrides { database_url: Some("postgres://flag@127.0.0.1/b".into()), ..Overrides::default() };
    assert_eq!(load(None, &env, &flags).unwrap().store.url.as_deref(), Some("postgres://flag@127.0.0.1/b"));
    assert_eq!(
        load(None, &env, &Overrides::default()).unwrap().store.url.as_deref(),
        Some("postgres://env@127.0.0.1/a")
    );
}

#[test]
fn tls_and_websocket_keys_and_flags_override_like_the_others() {
    let default = load(None, &[], &Overrides::default()).unwrap();
    assert!(!default.mqtt.tls.is_enabled());
    assert_eq!(
        (default.mqtt.tls.listen.port(), default.mqtt.ws.listen, default.mqtt.ws.tls_listen),
        (8883, None, None)
    );

    let file = "[mqtt.tls]\ncert = \"/etc/t/s.crt\"\nkey = \"/etc/t/s.key\"\n[mqtt.ws]\nlisten = \"127.0.0.1:8083\"\n";
    let env = [
        ("TELEHUB_MQTT__TLS__CLIENT_CA", "/etc/t/ca.crt"),
        ("TELEHUB_MQTT__WS__TLS_LISTEN", "127.0.0.1:8084"),
    ];
    let c = load(Some(file), &env, &Overrides::default()).unwrap();
    assert!(c.mqtt.tls.is_enabled());
    assert_eq!(c.mqtt.tls.client_ca, Some(PathBuf::from("/etc/t/ca.crt")));
    assert_eq!((c.mqtt.ws.listen.unwrap().port(), c.mqtt.ws.tls_listen.unwrap().port()), (8083, 8084));

    let addr = |port| Some(SocketAddr::from(([127, 0, 0, 1], port)));
    let flags =
        Overrides { mqtts_listen: addr(1), ws_listen: addr(2), wss_listen: addr(3), ..Overrides::default() };
    let c = load(Some(file), &env, &flags).unwrap();
    assert_eq!(
        (c.mqtt.tls.listen, c.mqtt.ws.listen, c.mqtt.ws.tls_listen),
        (addr(1).unwrap(), addr(2), addr(3))
    );

    let m = message(load(Some("[mqtt.tls]\ncertificate = \"x\"\n"), &[], &Overrides::default()));
    assert!(m.contains("certificate"), "{m}");
}

#[test]
fn auth_section_from_env_and_file_with_bad_values_named() {
    let env = [
        ("TELEHUB_AUTH__RATE__CONNECTIONS_PER_IP", "0"),
        ("TELEHUB_AUTH__JWT_AUDIENCE", "my-project"),
        ("TELEHUB_ADMIN_TOKEN", "not a config key"),
    ];
    let c = load(None, &env, &Overrides::default()).unwrap();
    assert_eq!(c.auth.rate.connections_per_ip, 0);
    assert_eq!(c.auth.jwt_audience, "my-project");
    let c = load(Some("[auth]\nip_allowlist = [\"10.0.0.0/8\", \"::1/128\"]\n"), &[], &Overrides::default())
        .unwrap();
    assert_eq!(c.auth.ip_allowlist.len(), 2);
    let m = message(load(Some("[auth]\nip_allowlist = [\"10.0.0.0/33\"]\n"), &[], &Overrides::default()));
    assert!(m.contains("auth.ip_allowlist"), "{m}");
    let m = message(load(Some("[auth]\njwt_max_lifetime = \"a day\"\n"), &[], &Overrides::default()));
    assert!(m.contains("auth.jwt_max_lifetime"), "{m}");
    let m = message(load(
        Some("[[auth.acl]]\neffect = \"maybe\"\naction = \"publish\"\nfilter = \"x\"\n"),
        &[],
        &Overrides::default(),
    ));
    assert!(m.contains("auth.acl") && m.contains("maybe"), "{m}");
}
