//! End-to-end tests of the MQTT transports of the built `telehub`: the same flows
//! (subscribe, QoS 1, retained, will on an abrupt close) over TCP, TLS, WebSocket and
//! secure WebSocket with Eclipse Paho's Python client (`transport="websockets"` for WS),
//! the Mosquitto clients over TLS, client certificates, the certificate reload on SIGHUP
//! (seen by `openssl s_client`), and start-up errors for unusable TLS files (exit code 2).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::{Finished, Proc, python_script, telehub_command};
use telehub_testkit::TestPki;

/// A running `telehub serve` with TLS (the certificate of `pki`), WebSocket and secure
/// WebSocket on free ports.
struct Hub {
    proc: Proc,
    mqtt: u16,
    mqtts: u16,
    ws: u16,
    wss: u16,
    _data: tempfile::TempDir,
}

/// The port of `field` (`"mqtts":"127.0.0.1:PORT"`) in telehub's JSON start-up line.
fn port_of(line: &str, field: &str) -> Option<u16> {
    let key = format!("\"{field}\":\"");
    let rest = &line[line.find(&key)? + key.len()..];
    let addr: SocketAddr = rest[..rest.find('"')?].parse().ok()?;
    Some(addr.port())
}

/// `[mqtt.tls]` for `pki`'s server certificate, plus `extra` lines.
fn tls_toml(pki: &TestPki, extra: &str) -> String {
    format!(
        "[mqtt.tls]\ncert = {:?}\nkey = {:?}\n{extra}\n",
        pki.server_cert_path().display().to_string(),
        pki.server_key_path().display().to_string(),
    )
}

impl Hub {
    /// Starts telehub with `config` (TOML) and every transport on 127.0.0.1:0.
    fn start(config: &str) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let file = data.path().join("telehub.toml");
        std::fs::write(&file, config).expect("write config");
        let mut cmd = telehub_command();
        cmd.arg("serve").arg("--config").arg(&file).arg("--data-dir").arg(data.path().join("data"));
        for flag in ["--mqtt-listen", "--http-listen", "--mqtts-listen", "--ws-listen", "--wss-listen"] {
            cmd.args([flag, "127.0.0.1:0"]);
        }
        cmd.args(["--log-format", "json", "--allow-anonymous"]);
        let proc = Proc::spawn(&mut cmd);
        let line = proc.expect_stderr("the start-up line with every listener", |l| {
            l.contains("telehub started")
                && ["mqtt", "mqtts", "ws", "wss"].iter().all(|f| port_of(l, f).is_some())
        });
        let port = |f| port_of(&line, f).expect("checked above");
        Self { mqtt: port("mqtt"), mqtts: port("mqtts"), ws: port("ws"), wss: port("wss"), proc, _data: data }
    }

    fn stop(mut self) -> Finished {
        self.proc.signal("TERM");
        self.proc.finish()
    }
}

fn assert_ok(f: &Finished, what: &str) {
    assert!(f.status.success(), "{what} failed: {:?}\n{}\n{}", f.status, f.stdout_text(), f.stderr_text());
}

/// Runs `tests/python/transport_flows.py flows` and checks every step passed.
fn paho_flows(port: u16, prefix: &str, args: &[&str]) {
    let f = common::run(
        python_script("transport_flows.py").arg("flows").arg(port.to_string()).arg(prefix).args(args),
    );
    assert_ok(&f, &format!("paho flows over {prefix}"));
    for step in ["ok subscribe", "ok qos1", "ok retained", "ok will", "done"] {
        assert!(f.stdout.iter().any(|l| l == step), "{prefix}: no {step:?}\n{}", f.stdout_text());
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn paho_runs_the_same_flows_over_tcp_tls_ws_and_wss() {
    let pki = TestPki::new();
    let hub = Hub::start(&tls_toml(&pki, ""));
    let ca = path(&pki.ca_path());
    paho_flows(hub.mqtt, "e2e/tcp", &[]);
    paho_flows(hub.mqtts, "e2e/tls", &["--cafile", &ca]);
    paho_flows(hub.ws, "e2e/ws", &["--websockets"]);
    paho_flows(hub.wss, "e2e/wss", &["--websockets", "--cafile", &ca]);
    assert_eq!(hub.stop().status.code(), Some(0));
}

/// `mosquitto_sub`/`mosquitto_pub` over TLS to `port`, trusting `pki`'s CA.
fn mosquitto(program: &str, pki: &TestPki, port: u16) -> Command {
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", program, "-d", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("--cafile")
        .arg(pki.ca_path());
    cmd
}

#[test]
fn mosquitto_clients_run_the_same_flows_over_tls() {
    let pki = TestPki::new();
    let hub = Hub::start(&tls_toml(&pki, ""));
    let sub = Proc::spawn(
        mosquitto("mosquitto_sub", &pki, hub.mqtts)
            .args(["-i", "tls-sub", "-t", "e2e/tls/#", "-q", "1", "-C", "3", "-W", "10"])
            .args(["-F", "MSG|%t|%q|%r|%p"]),
    );
    sub.expect_stdout("SUBACK", |l| l.starts_with("Subscribed (mid"));

    let publish = |args: &[&str]| {
        let f = common::run(mosquitto("mosquitto_pub", &pki, hub.mqtts).args(args));
        assert_ok(&f, &format!("mosquitto_pub {args:?}"));
        assert!(f.stdout_text().contains("received PUBACK"), "{}", f.stdout_text());
    };
    publish(&["-t", "e2e/tls/data", "-q", "1", "-m", "21.5"]);
    publish(&["-t", "e2e/tls/retained", "-q", "1", "-r", "-m", "kept"]);
    let late = common::run(mosquitto("mosquitto_sub", &pki, hub.mqtts).args([
        "-t",
        "e2e/tls/retained",
        "-q",
        "1",
        "-C",
        "1",
        "-W",
        "10",
        "-F",
        "MSG|%t|%r|%p",
    ]));
    assert_ok(&late, "the late subscriber");
    assert!(late.stdout.contains(&"MSG|e2e/tls/retained|1|kept".to_owned()), "{}", late.stdout_text());

    // a client with a will, killed: no DISCONNECT, no TLS close_notify
    let mut dying = Proc::spawn(
        mosquitto("mosquitto_sub", &pki, hub.mqtts)
            .args(["-i", "tls-dying", "-t", "e2e/nothing", "--will-topic", "e2e/tls/will"])
            .args(["--will-payload", "gone", "--will-qos", "1"]),
    );
    dying.expect_stdout("the dying client's SUBACK", |l| l.starts_with("Subscribed (mid"));
    dying.signal("KILL");

    let f = sub.finish();
    assert_ok(&f, "mosquitto_sub over TLS");
    let got: Vec<&str> = f.stdout.iter().filter_map(|l| l.strip_prefix("MSG|")).collect();
    assert_eq!(got, ["e2e/tls/data|1|0|21.5", "e2e/tls/retained|1|0|kept", "e2e/tls/will|1|0|gone"]);
    assert_eq!(hub.stop().status.code(), Some(0));
}

#[test]
fn with_client_ca_only_clients_with_a_certificate_from_it_are_served() {
    let pki = TestPki::new();
    let stranger = TestPki::new();
    let hub = Hub::start(&tls_toml(&pki, &format!("client_ca = {:?}", path(&pki.ca_path()))));
    let pub_with = |id: &TestPki| {
        common::run(
            mosquitto("mosquitto_pub", &pki, hub.mqtts).args(["-t", "e2e/mtls", "-q", "1", "-m", "x"]).args(
                [
                    "--cert".to_owned(),
                    path(&id.client_cert_path()),
                    "--key".to_owned(),
                    path(&id.client_key_path()),
                ],
            ),
        )
    };
    assert_ok(&pub_with(&pki), "mosquitto_pub with a client certificate from the CA");
    // refused by a TLS alert (with TLS 1.3, after the client has sent CONNECT)
    let refused = |f: &Finished| {
        !f.status.success()
            && format!("{}{}", f.stdout_text(), f.stderr_text()).to_lowercase().contains("alert")
    };
    let f = pub_with(&stranger);
    assert!(
        refused(&f),
        "a certificate from another CA: {:?}\n{}\n{}",
        f.status,
        f.stdout_text(),
        f.stderr_text()
    );
    let f = common::run(
        mosquitto("mosquitto_pub", &pki, hub.mqtts).args(["-t", "e2e/mtls", "-q", "1", "-m", "x"]),
    );
    assert!(refused(&f), "no client certificate: {:?}\n{}\n{}", f.status, f.stdout_text(), f.stderr_text());

    // secure WebSocket shares the requirement
    let (ca, cert, key) = (path(&pki.ca_path()), path(&pki.client_cert_path()), path(&pki.client_key_path()));
    paho_flows(hub.wss, "e2e/mwss", &["--websockets", "--cafile", &ca, "--cert", &cert, "--key", &key]);
    let f = common::run(python_script("transport_flows.py").args([
        "flows",
        &hub.wss.to_string(),
        "e2e/nocert",
        "--websockets",
        "--cafile",
        &ca,
    ]));
    assert!(
        f.stderr_text().contains("CERTIFICATE_REQUIRED"),
        "wss without a client certificate: {}",
        f.stderr_text()
    );
    assert_eq!(hub.stop().status.code(), Some(0));
}

/// The subject of the certificate `openssl s_client` is shown on `port` now.
fn served_subject(pki: &TestPki, port: u16) -> String {
    let f = common::run(
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"])
            .arg("-CAfile")
            .arg(pki.ca_path()),
    );
    assert!(
        f.stdout_text().contains("Verify return code: 0 (ok)"),
        "{}\n{}",
        f.stdout_text(),
        f.stderr_text()
    );
    f.stdout
        .iter()
        .find(|l| l.starts_with("subject="))
        .cloned()
        .unwrap_or_else(|| panic!("{}", f.stdout_text()))
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections() {
    let pki = TestPki::new();
    // no file polling: only SIGHUP reloads here
    let mut hub = Hub::start(&tls_toml(&pki, "reload_interval = \"0s\""));
    assert!(served_subject(&pki, hub.mqtts).contains("telehub test server"));

    pki.issue_server("renewed by the operator");
    hub.proc.signal("HUP");
    hub.proc.expect_stderr("the reload log line", |l| {
        l.contains("TLS certificate reloaded") && l.contains("SIGHUP")
    });
    assert!(served_subject(&pki, hub.mqtts).contains("renewed by the operator"));
    assert!(served_subject(&pki, hub.wss).contains("renewed by the operator"));

    // a broken file is refused, logged, and the certificate in use stays
    std::fs::write(pki.server_cert_path(), "not a certificate").unwrap();
    hub.proc.signal("HUP");
    hub.proc.expect_stderr("the failed reload log line", |l| {
        l.contains("TLS certificate not reloaded") && l.contains(&path(&pki.server_cert_path()))
    });
    assert!(served_subject(&pki, hub.mqtts).contains("renewed by the operator"));
    paho_flows(hub.mqtts, "e2e/reloaded", &["--cafile", &path(&pki.ca_path())]);
    assert_eq!(hub.stop().status.code(), Some(0));
}

#[test]
fn unusable_tls_files_stop_start_up_with_exit_code_2_naming_the_file() {
    let pki = TestPki::new();
    let missing = pki.dir().join("missing.key");
    let not_a_key = pki.server_cert_path();
    for (key, named) in [(&missing, &missing), (&not_a_key, &not_a_key)] {
        let dir = tempfile::tempdir().unwrap();
        let f = common::run(
            telehub_command()
                .arg("serve")
                .arg("--data-dir")
                .arg(dir.path())
                .args(["--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
                .args(["--mqtts-listen", "127.0.0.1:0"])
                .env("TELEHUB_MQTT__TLS__CERT", pki.server_cert_path())
                .env("TELEHUB_MQTT__TLS__KEY", key),
        );
        assert_eq!(f.status.code(), Some(2), "{}", f.stderr_text());
        assert!(f.stderr_text().contains(&path(named)), "{}", f.stderr_text());
    }
}

#[test]
fn the_start_up_line_names_only_the_listeners_that_are_on() {
    let hub = common::Telehub::start();
    let line = hub.expect_log("the start-up line", |l| l.contains("telehub started"));
    for field in ["\"mqtts\"", "\"ws\"", "\"wss\"", "mqtts://", "ws://"] {
        assert!(!line.contains(field), "{field} in {line}");
    }
    assert_eq!(hub.stop().status.code(), Some(0));
}
