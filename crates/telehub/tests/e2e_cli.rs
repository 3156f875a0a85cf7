//! End-to-end tests of the `telehub` command line itself: `config print`/`config show`,
//! exit code 2 with a clear message for every bad configuration (never a panic), the
//! config layering (file < env < flags) as the real binary applies it, and clean stops on
//! SIGTERM/SIGINT.

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::{Finished, Proc, Telehub, parse_mqtt_port, run, telehub_command};
use telehub::config::{Config, DEFAULT_TOML};

/// A `telehub` command running in its own temp dir (so `./telehub-data` never lands in
/// the source tree) with its data dir inside it.
fn in_temp_dir(dir: &tempfile::TempDir) -> Command {
    let mut cmd = telehub_command();
    cmd.current_dir(dir.path());
    cmd
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Exit code 2, a message on stderr naming every `needle`, nothing on stdout, no panic.
fn assert_rejected(f: &Finished, needles: &[&str]) {
    let stderr = f.stderr_text();
    assert_eq!(f.status.code(), Some(2), "expected exit code 2, got {:?}; stderr:\n{stderr}", f.status);
    assert!(!stderr.contains("panicked"), "telehub panicked:\n{stderr}");
    assert!(!stderr.trim().is_empty(), "no message on stderr");
    for needle in needles {
        assert!(stderr.contains(needle), "stderr does not name {needle:?}:\n{stderr}");
    }
    assert!(f.stdout.iter().all(|l| l.trim().is_empty()), "unexpected stdout: {:?}", f.stdout);
}

/// A config error is one line (a `telehub: ` message), not a dump.
fn assert_one_line(f: &Finished) {
    let lines: Vec<_> = f.stderr.iter().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one message line, got:\n{}", f.stderr_text());
    assert!(lines[0].starts_with("telehub: "), "{}", lines[0]);
}

fn config_of(toml_text: &str) -> Config {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("not a telehub config: {e}\n{toml_text}"))
}

#[test]
fn config_print_is_valid_toml_and_is_the_config_the_binary_uses() {
    let dir = tempfile::tempdir().unwrap();
    let printed = run(in_temp_dir(&dir).args(["config", "print"]));
    assert!(printed.status.success(), "{printed:?}");
    let text = printed.stdout_text() + "\n";
    assert_eq!(text.trim_end(), DEFAULT_TOML.trim_end(), "`config print` is not the embedded default");
    let table: toml::Table = toml::from_str(&text).expect("`config print` output is TOML");
    for section in ["data_dir", "mqtt", "http"] {
        assert!(table.contains_key(section), "`config print` has no `{section}`");
    }
    let printed_config = config_of(&text);
    assert_eq!(printed_config, Config::default());

    // what the binary actually loads with no file, no environment and no flags
    let shown = run(in_temp_dir(&dir).args(["config", "show"]));
    assert!(shown.status.success(), "{shown:?}");
    assert_eq!(config_of(&shown.stdout_text()), printed_config);

    // and the printed file, given back as --config, changes nothing
    let file = write(&dir, "printed.toml", &text);
    let shown = run(in_temp_dir(&dir).args(["config", "show", "--config"]).arg(&file));
    assert!(shown.status.success(), "{shown:?}");
    assert_eq!(config_of(&shown.stdout_text()), printed_config);
}

#[test]
fn unknown_key_in_config_file_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "typo.toml", "[mqtt]\nlisen = \"127.0.0.1:0\"\n");
    let f = run(in_temp_dir(&dir).args(["serve", "--config"]).arg(&file));
    assert_rejected(&f, &["mqtt.lisen", "typo.toml"]);
    assert_one_line(&f);

    let file = write(&dir, "toplevel.toml", "colour = \"blue\"\n");
    let f = run(in_temp_dir(&dir).args(["serve", "--config"]).arg(&file));
    assert_rejected(&f, &["colour", "toplevel.toml"]);
    assert_one_line(&f);
}

#[test]
fn wrong_type_in_config_file_exits_2_naming_the_dotted_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "type.toml", "[mqtt]\nmax_inflight = \"many\"\n");
    let f = run(in_temp_dir(&dir).args(["serve", "--config"]).arg(&file));
    assert_rejected(&f, &["mqtt.max_inflight", "type.toml"]);
    assert_one_line(&f);

    let file = write(&dir, "duration.toml", "[mqtt]\nconnect_timeout = \"ten seconds\"\n");
    let f = run(in_temp_dir(&dir).args(["serve", "--config"]).arg(&file));
    assert_rejected(&f, &["mqtt.connect_timeout", "duration.toml"]);
    assert_one_line(&f);

    let file = write(&dir, "range.toml", "[mqtt]\nmax_inflight = 70000\n");
    let f = run(in_temp_dir(&dir).args(["serve", "--config"]).arg(&file));
    assert_rejected(&f, &["mqtt.max_inflight"]);
    assert_one_line(&f);

    let file = write(&dir, "broken.toml", "[mqtt\nlisten = \n");
    let f = run(in_temp_dir(&dir).args(["serve", "--config"]).arg(&file));
    assert_rejected(&f, &["broken.toml"]);
}

#[test]
fn wrong_environment_variable_exits_2_naming_the_key_and_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let f = run(in_temp_dir(&dir).arg("serve").env("TELEHUB_MQTT__MAX_INFLIGHT", "lots"));
    assert_rejected(&f, &["mqtt.max_inflight", "TELEHUB_MQTT__MAX_INFLIGHT"]);
    assert_one_line(&f);

    let f = run(in_temp_dir(&dir).arg("serve").env("TELEHUB_MQTT__LISTEN", "nowhere"));
    assert_rejected(&f, &["mqtt.listen", "TELEHUB_MQTT__LISTEN"]);
    assert_one_line(&f);

    let f = run(in_temp_dir(&dir).arg("serve").env("TELEHUB_MQTT__MAX_INFLIHGT", "5"));
    assert_rejected(&f, &["mqtt.max_inflihgt"]);
    assert_one_line(&f);
}

#[test]
fn missing_config_file_exits_2_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("telehub.toml");
    let f = run(in_temp_dir(&dir).args(["serve", "--config"]).arg(&missing));
    assert_rejected(&f, &[&missing.display().to_string()]);
    assert_one_line(&f);
}

#[test]
fn bad_flag_values_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value) in [("--mqtt-listen", "nowhere"), ("--shutdown-grace", "soon"), ("--log-format", "xml")]
    {
        let f = run(in_temp_dir(&dir).args(["serve", flag, value]));
        assert_rejected(&f, &[flag, value]);
    }
}

#[test]
fn port_in_use_exits_2_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let f = run(in_temp_dir(&dir)
        .args(["serve", "--log-format", "json", "--mqtt-listen", &addr])
        .args(["--data-dir".as_ref(), dir.path().join("data").as_os_str()]));
    assert_rejected(&f, &[&addr]);
    drop(taken);
}

#[test]
fn unusable_data_dir_exits_2_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "a-regular-file", "not a directory");
    let data_dir = file.join("data");
    let f = run(in_temp_dir(&dir)
        .args(["serve", "--log-format", "json", "--mqtt-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir));
    assert_rejected(&f, &[&data_dir.display().to_string()]);
    assert_one_line(&f);
    assert!(file.is_file(), "telehub must not touch what is in the way");
}

#[test]
fn sigterm_stops_cleanly_with_exit_code_0() {
    let hub = Telehub::start();
    let data_dir = hub.data_dir();
    assert!(data_dir.is_dir(), "telehub creates its data dir");
    let f = hub.stop();
    let logs = f.stderr_text();
    assert_eq!(f.status.code(), Some(0), "SIGTERM must exit 0, got {:?}; log:\n{logs}", f.status);
    assert!(f.stderr.iter().any(|l| l.contains("\"message\":\"stopped\"")), "no `stopped` line:\n{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    // every log line is a JSON object, and nothing but logs went to stderr
    assert!(f.stderr.iter().all(|l| l.starts_with('{') && l.ends_with('}')), "non-JSON stderr:\n{logs}");
}

#[test]
fn sigint_stops_cleanly_with_exit_code_0() {
    let hub = Telehub::start();
    let f = hub.stop_with("INT");
    let logs = f.stderr_text();
    assert_eq!(f.status.code(), Some(0), "SIGINT must exit 0, got {:?}; log:\n{logs}", f.status);
    assert!(f.stderr.iter().any(|l| l.contains("\"message\":\"stopped\"")), "no `stopped` line:\n{logs}");
}

#[test]
fn start_up_line_names_the_bound_port_and_the_canonical_data_dir() {
    let hub = Telehub::start();
    let line = hub.expect_log("start-up line", |l| l.contains("telehub started"));
    assert_eq!(parse_mqtt_port(&line), Some(hub.port()));
    assert_ne!(hub.port(), 0);
    let canonical = hub.data_dir().canonicalize().unwrap();
    assert!(
        line.contains(&format!("\"data_dir\":\"{}\"", canonical.display())),
        "start-up line does not name {}: {line}",
        canonical.display()
    );
    // the port is really served
    std::net::TcpStream::connect(hub.addr()).expect("connect to the logged port");
    assert_eq!(hub.stop().status.code(), Some(0));
}

/// file < environment < flags, as the binary applies them: each lower layer points at a
/// port that is taken, so telehub only starts if the higher layer wins.
#[test]
fn environment_overrides_file_and_flags_override_environment() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let file = write(&dir, "layer.toml", &format!("[mqtt]\nlisten = \"{taken_addr}\"\n"));

    // the file alone: refused, naming the taken address
    let f = run(in_temp_dir(&dir)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data")));
    assert_rejected(&f, &[&taken_addr.to_string()]);

    // environment over file
    let mut proc = Proc::spawn(
        in_temp_dir(&dir)
            .args(["serve", "--log-format", "json", "--http-listen", "127.0.0.1:0", "--config"])
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("TELEHUB_MQTT__LISTEN", "127.0.0.1:0"),
    );
    let line = proc.expect_stderr("start-up line", |l| parse_mqtt_port(l).is_some());
    assert_ne!(parse_mqtt_port(&line), Some(taken_addr.port()));
    proc.signal("TERM");
    assert_eq!(proc.finish().status.code(), Some(0));

    // flags over environment (and file)
    let hub = Telehub::start_with(|cmd| {
        cmd.arg("--config").arg(&file).env("TELEHUB_MQTT__LISTEN", taken_addr.to_string());
    });
    assert_ne!(hub.port(), taken_addr.port());
    assert_eq!(hub.stop().status.code(), Some(0));
    drop(taken);
}
