//! End-to-end security of the built `telehub`, as a user runs it (no `--allow-anonymous`):
//! a Google Cloud IoT Core device (PyJWT + paho-mqtt over TLS, Google's sample code)
//! authenticating with a JWT signed by its own RSA key; the Mosquitto clients with device
//! tokens (own lane allowed, another device's topics refused, anonymous refused, a deleted
//! device's live connection dropped); the IP allowlist on MQTT, WebSocket and HTTP alike;
//! the first admin token shown once and `telehub token create`.

mod common;

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;

use common::{ADMIN_TOKEN, Proc, TIMEOUT, Telehub, curl, python_script, telehub_command};
use telehub_testkit::TestPki;

/// The port of `field` (`"mqtts":"127.0.0.1:PORT"`) in telehub's JSON start-up line.
fn port_of(line: &str, field: &str) -> Option<u16> {
    let key = format!("\"{field}\":\"");
    let rest = &line[line.find(&key)? + key.len()..];
    let addr: SocketAddr = rest[..rest.find('"')?].parse().ok()?;
    Some(addr.port())
}

/// A secure hub with `config` (TOML) and `flags`.
fn secure_hub(config: &str, flags: &[&str]) -> Telehub {
    let data = tempfile::tempdir().expect("temp dir");
    let file = data.path().join("telehub.toml");
    std::fs::write(&file, config).expect("write config");
    let flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
    Telehub::start_secure_in(data, move |cmd| {
        cmd.arg("--config").arg(&file).args(&flags);
    })
}

fn post_json(hub: &Telehub, path: &str, body: &str) -> serde_json::Value {
    let r = curl(&hub.http_url(path), &["-X", "POST", "-H", "content-type: application/json", "-d", body]);
    assert!((200..300).contains(&r.status), "POST {path} {body}: {} {}", r.status, r.body);
    r.json()
}

/// Registers `device` and returns a new token of it.
fn device_with_token(hub: &Telehub, device: &str) -> String {
    post_json(hub, "/api/v1/devices", &format!(r#"{{"id":"{device}"}}"#));
    let created = post_json(hub, &format!("/api/v1/devices/{device}/credentials"), r#"{"kind":"token"}"#);
    created["token"].as_str().expect("the token is shown on creation").to_owned()
}

fn openssl(args: &[&str]) {
    let f = common::run(Command::new("openssl").args(args));
    assert!(f.status.success(), "openssl {args:?}: {}", f.stderr_text());
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_cloud_iot_core_device_connects_over_tls_with_its_own_signed_jwt() {
    let pki = TestPki::new();
    let config = format!(
        "[mqtt.tls]\ncert = {:?}\nkey = {:?}\n[auth]\njwt_audience = \"my-project\"\n",
        path(&pki.server_cert_path()),
        path(&pki.server_key_path()),
    );
    let hub = secure_hub(&config, &["--mqtts-listen", "127.0.0.1:0"]);
    let line = hub.expect_log("the start-up line with mqtts", |l| l.contains("telehub started"));
    let mqtts = port_of(&line, "mqtts").expect("mqtts port in the start-up line");

    let keys = tempfile::tempdir().unwrap();
    let private = keys.path().join("rsa_private.pem");
    let public = keys.path().join("rsa_public.pem");
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", &path(&private)]);
    openssl(&["pkey", "-in", &path(&private), "-pubout", "-out", &path(&public)]);
    post_json(&hub, "/api/v1/devices", r#"{"id":"weather-7"}"#);
    let pem = std::fs::read_to_string(&public).unwrap();
    let body = serde_json::json!({ "kind": "jwt_rs256", "public_key": pem }).to_string();
    post_json(&hub, "/api/v1/devices/weather-7/credentials", &body);

    let device = |project: &str, extra: &[&str]| {
        common::run(
            python_script("cloudiot_device.py")
                .args([
                    "127.0.0.1",
                    &mqtts.to_string(),
                    &path(&pki.ca_path()),
                    &path(&private),
                    project,
                    "weather-7",
                ])
                .args(extra),
        )
    };
    let f = device("my-project", &[]);
    assert!(f.status.success(), "{}\n{}", f.stdout_text(), f.stderr_text());
    assert_eq!(f.stdout, ["connected", "subscribed [1, 0]", "published"], "{}", f.stderr_text());
    // the event is telemetry of weather-7, committed before the PUBACK
    let latest = curl(&hub.http_url("/api/v1/devices/weather-7/latest"), &[]).json();
    assert_eq!(latest["values"]["temperature"]["value"], 21.5, "{latest}");

    // refused: a JWT for another project, an expired one, one valid for too long
    for (why, project, extra) in [
        ("wrong audience", "other-project", &[][..]),
        ("expired", "my-project", &["20", "-7200"][..]),
        ("lifetime over 24 h", "my-project", &["1500"][..]),
    ] {
        let f = device(project, extra);
        assert_eq!(f.stdout, ["refused 4"], "{why}: {}", f.stderr_text());
    }
    let audit = curl(&hub.http_url("/api/v1/audit?action=auth.mqtt"), &[]).json();
    let reasons: Vec<&str> =
        audit["events"].as_array().unwrap().iter().filter_map(|e| e["detail"]["reason"].as_str()).collect();
    for reason in ["JWT audience wrong", "JWT expired", "JWT lifetime too long"] {
        assert!(reasons.contains(&reason), "{reason} not in {audit}");
    }
    assert_eq!(hub.stop().status.code(), Some(0));
}

/// `mosquitto_pub`/`mosquitto_sub` (MQTT 5) to the hub as `device` with `token`.
fn mosquitto(program: &str, hub: &Telehub, login: Option<(&str, &str)>) -> Command {
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", program, "-V", "mqttv5", "-h", "127.0.0.1", "-p"]).arg(hub.port().to_string());
    if let Some((user, password)) = login {
        cmd.args(["-u", user, "-P", password]);
    }
    cmd
}

#[test]
fn mosquitto_clients_with_device_tokens_stay_in_their_lane() {
    let hub = secure_hub("", &[]);
    let a = device_with_token(&hub, "pi-a");
    let b = device_with_token(&hub, "pi-b");

    let sub = Proc::spawn(mosquitto("mosquitto_sub", &hub, Some(("pi-a", &a))).args([
        "-t",
        "devices/pi-a/#",
        "-q",
        "1",
        "-v",
        "-d",
    ]));
    sub.expect_stdout("pi-a's SUBACK", |l| l.contains("received SUBACK"));
    // a publish of pi-a itself arrives: the subscription is live
    let ok = common::run(mosquitto("mosquitto_pub", &hub, Some(("pi-a", &a))).args([
        "-t",
        "devices/pi-a/commands",
        "-q",
        "1",
        "-m",
        "hello",
    ]));
    assert!(ok.status.success(), "{}", ok.stderr_text());
    sub.expect_stdout("pi-a's own message", |l| l == "devices/pi-a/commands hello");

    // pi-b may not publish into pi-a's topics (PUBACK 0x87) nor subscribe to them
    let refused = common::run(mosquitto("mosquitto_pub", &hub, Some(("pi-b", &b))).args([
        "-t",
        "devices/pi-a/commands",
        "-q",
        "1",
        "-m",
        "intruder",
    ]));
    let text = format!("{}{}", refused.stdout_text(), refused.stderr_text());
    assert!(text.to_lowercase().contains("not authori"), "{text}");
    let denied = common::run(mosquitto("mosquitto_sub", &hub, Some(("pi-b", &b))).args([
        "-t",
        "devices/pi-a/#",
        "-C",
        "1",
        "-W",
        "5",
    ]));
    let text = format!("{}{}", denied.stdout_text(), denied.stderr_text());
    assert!(text.contains("All subscription requests were denied"), "{text}");

    // no credentials, or a wrong token: refused at CONNECT
    for login in [None, Some(("pi-a", "thd_not-the-token"))] {
        let f =
            common::run(mosquitto("mosquitto_pub", &hub, login).args(["-t", "devices/pi-a/x", "-m", "1"]));
        assert!(!f.status.success(), "{login:?} was accepted");
        assert!(f.stderr_text().to_lowercase().contains("bad user name or password"), "{}", f.stderr_text());
    }

    // the next message pi-a gets is its own again: the intruder's never arrived
    let ok = common::run(mosquitto("mosquitto_pub", &hub, Some(("pi-a", &a))).args([
        "-t",
        "devices/pi-a/x",
        "-q",
        "1",
        "-m",
        "2",
    ]));
    assert!(ok.status.success());
    sub.expect_stdout("the second message of pi-a", |l| l == "devices/pi-a/x 2");
    assert!(!sub.stdout().snapshot().iter().any(|l| l.contains("intruder")));

    // deleting pi-a drops its live connection, and it cannot come back
    let r = curl(&hub.http_url("/api/v1/devices/pi-a"), &["-X", "DELETE"]);
    assert_eq!(r.status, 204, "{}", r.body);
    // mosquitto_sub exits: dropped, then refused when it reconnects (bounded by TIMEOUT)
    let _ = sub.finish();
    let f = common::run(mosquitto("mosquitto_pub", &hub, Some(("pi-a", &a))).args([
        "-t",
        "devices/pi-a/x",
        "-m",
        "3",
    ]));
    assert!(!f.status.success());
    assert_eq!(hub.stop().status.code(), Some(0));
}

/// Whether the listener at `port` closes a new connection before answering anything.
fn closed_at_once(port: u16, hello: &[u8]) -> bool {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = std::io::Write::write_all(&mut s, hello);
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn an_address_outside_the_allowlist_is_refused_on_mqtt_websocket_and_http() {
    let config = "[auth]\nip_allowlist = [\"10.0.0.0/8\", \"192.168.0.0/16\"]\n";
    let hub = secure_hub(config, &["--ws-listen", "127.0.0.1:0", "--allow-anonymous"]);
    let line = hub.expect_log("the start-up line with ws", |l| l.contains("telehub started"));
    let ws = port_of(&line, "ws").expect("ws port");
    // MQTT CONNECT (3.1.1, client id "x") and a WebSocket upgrade: closed unanswered
    let connect = [0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01, b'x'];
    assert!(closed_at_once(hub.port(), &connect), "MQTT over TCP answered");
    let upgrade = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                    Sec-WebSocket-Protocol: mqtt\r\n\r\n";
    assert!(closed_at_once(ws, upgrade), "MQTT over WebSocket answered");
    for path in ["/healthz", "/api/v1/devices", "/data"] {
        let r = curl(&hub.http_url(path), &[]);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    assert_eq!(hub.stop().status.code(), Some(0));
}

#[test]
fn the_first_start_shows_an_admin_token_once_and_the_cli_makes_more() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let hub = Telehub::start_secure_in(data, |cmd| {
        cmd.env_remove("TELEHUB_ADMIN_TOKEN");
    });
    let line = hub.expect_log("the first admin token", |l| l.trim_start().starts_with("tha_"));
    let first = line.trim().to_owned();
    let devices = hub.http_url("/api/v1/devices");
    let bearer = format!("Authorization: Bearer {first}");
    assert_eq!(curl(&devices, &["-H", &bearer]).status, 200);
    assert_eq!(curl(&devices, &["-H", "Authorization:"]).status, 401);
    assert_eq!(curl(&devices, &["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")]).status, 401);

    // a read token made by the CLI while the hub runs is accepted within seconds
    let made = common::run(
        telehub_command()
            .args(["token", "create", "--scope", "read", "--name", "dashboard", "--data-dir"])
            .arg(&data_dir)
            .env_remove("TELEHUB_ADMIN_TOKEN"),
    );
    assert!(made.status.success(), "{}", made.stderr_text());
    let read = made.stdout_text().trim().to_owned();
    assert!(read.starts_with("tha_"), "{read}");
    let read_bearer = format!("Authorization: Bearer {read}");
    common::eventually("the CLI's token accepted", || curl(&devices, &["-H", &read_bearer]).status == 200);
    let write = curl(&devices, &["-H", &read_bearer, "-X", "POST", "-d", r#"{"id":"x"}"#]);
    assert_eq!(write.status, 403, "{}", write.body);

    // a restart on the same data shows no new token
    let dir = hub.kill9();
    let again = Telehub::start_secure_in(dir, |cmd| {
        cmd.env_remove("TELEHUB_ADMIN_TOKEN");
    });
    assert_eq!(curl(&again.http_url("/api/v1/devices"), &["-H", &bearer]).status, 200);
    assert!(!again.log_lines().iter().any(|l| l.contains("First admin token")));
    assert_eq!(again.stop().status.code(), Some(0));
}
