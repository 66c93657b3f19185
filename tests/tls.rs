//! MQTT over TLS end to end, with a test CA made here by openssl: the embedded broker's TLS
//! listener and mosquitto's, the manager and agents dialing `mqtts://` with the CA file; an
//! agent holding another CA is refused with an error that says so, and never shows online.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use verge_testkit::edge::mosquitto_passwd;
use verge_testkit::{ANY_PORT, Proc, TempDir, bin, get, listener, reserve_port, wait_for};

const PATIENCE: Duration = Duration::from_secs(20);

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate it signs for `localhost` and 127.0.0.1, and a second CA that
/// signed nothing.
fn pki(dir: &Path) -> Pki {
    // A new P-256 key, unencrypted, for each request.
    let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    let request = |args: &[&str]| {
        let args: Vec<&str> = ["req"]
            .into_iter()
            .chain(new_key.split(' '))
            .chain(args.iter().copied())
            .collect();
        openssl(dir, &args);
    };
    for ca in ["ca", "other-ca"] {
        request(&[
            "-x509",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=verge test {ca}"),
        ]);
    }
    request(&[
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    // mosquitto started as root reads its key after dropping to its own user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        other_ca: dir.join("other-ca.pem"),
    }
}

fn start_agent(dir: &TempDir, id: &str, secret: &str, url: &str, ca: &Path) -> Proc {
    let config = dir.write(
        &format!("{id}.toml"),
        &format!(
            "id = \"{id}\"\nsecret = \"{secret}\"\n[mqtt]\nurl = \"{url}\"\nca_file = \"{}\"\n\
             keepalive_secs = 3\nmax_backoff_secs = 1\n\
             [rtmp]\nlisten = \"{ANY_PORT}\"\n[http]\nlisten = \"{ANY_PORT}\"\n[hls]\nlisten = \"{ANY_PORT}\"\n\
             [record]\ndir = \"{}/rec-{id}\"\n",
            ca.display(),
            dir.path().display()
        ),
    );
    Proc::spawn(
        id,
        &bin("verge-agent"),
        &["--config", config.to_str().unwrap()],
        dir.path(),
    )
}

fn start_manager(dir: &TempDir, config: &Path) -> (Proc, verge_testkit::Listeners) {
    Proc::manager(config, dir.path())
}

fn online(http: SocketAddr, id: &str) -> bool {
    get(http, "/api/nodes/")
        .ok()
        .map(|r| r.json())
        .and_then(|n| {
            n.as_array()?
                .iter()
                .find(|n| n["alias"] == id)
                .map(|n| n["online"] == true)
        })
        .unwrap_or(false)
}

/// edge-1 (right CA) comes online; edge-2 (another CA) is refused, says why, stays offline.
fn right_ca_connects_wrong_ca_is_refused(dir: &TempDir, http: SocketAddr, url: &str, pki: &Pki) {
    let mut good = start_agent(dir, "edge-1", "s1", url, &pki.ca);
    assert!(
        wait_for(PATIENCE, || online(http, "edge-1").then_some(())).is_some(),
        "edge-1 never came online over {url}:\n{}",
        good.log_text()
    );
    let detail = get(http, "/api/agents/edge-1").unwrap().json();
    assert!(detail["ping"]["rtt_ms"].as_f64().is_some(), "{detail}");

    let mut bad = start_agent(dir, "edge-2", "s2", url, &pki.other_ca);
    let said = wait_for(PATIENCE, || {
        let log = bad.log_text();
        (log.contains("certificate is not trusted") && log.contains("UnknownIssuer")).then_some(log)
    });
    let said = said.unwrap_or_else(|| {
        panic!(
            "an agent with the wrong CA did not say why it is refused:\n{}",
            bad.log_text()
        )
    });
    if let Some(line) = said.lines().find(|l| l.contains("not trusted")) {
        println!("wrong CA: {line}");
    }
    assert!(!online(http, "edge-2"), "edge-2 is online with a wrong CA");
    let _ = (good.exited(), bad.exited());
}

#[test]
fn the_embedded_broker_serves_agents_over_tls() {
    let dir = TempDir::new("tls-embedded");
    let pki = pki(dir.path());
    let config = dir.write(
        "manager.toml",
        &format!(
            "[http]\nlisten = \"{ANY_PORT}\"\n[broker]\nlisten = \"{ANY_PORT}\"\ntls_listen = \"{ANY_PORT}\"\n\
             cert = \"{}\"\nkey = \"{}\"\n\
             [[agents]]\nid = \"edge-1\"\nsecret = \"s1\"\n[[agents]]\nid = \"edge-2\"\nsecret = \"s2\"\n",
            pki.cert.display(),
            pki.key.display()
        ),
    );
    let (_manager, bound) = start_manager(&dir, &config);
    let http = listener(&bound, "http");
    let tls = listener(&bound, "mqtts");
    let url = format!("mqtts://localhost:{}", tls.port());
    right_ca_connects_wrong_ca_is_refused(&dir, http, &url, &pki);
}

#[test]
fn mosquitto_serves_manager_and_agents_over_tls() {
    let dir = TempDir::new("tls-mosquitto");
    let pki = pki(dir.path());
    let port = reserve_port();
    let passwd = dir.path().join("passwd");
    mosquitto_passwd(
        &passwd,
        &[("edge-1", "s1"), ("edge-2", "s2"), ("verge-manager", "mgr")],
    );
    let acl = dir.write("acl", include_str!("../conf/mosquitto/acl"));
    let conf = dir.write(
        "mosquitto.conf",
        &format!(
            "listener {} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             allow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\n",
            port.addr().port(),
            pki.ca.display(),
            pki.cert.display(),
            pki.key.display(),
            passwd.display(),
            acl.display()
        ),
    );
    let _broker = Proc::spawn(
        "mosquitto",
        Path::new("/usr/sbin/mosquitto"),
        &["-c", conf.to_str().unwrap()],
        dir.path(),
    );
    assert!(
        wait_for(PATIENCE, || std::net::TcpStream::connect(port.addr()).ok()).is_some(),
        "mosquitto does not listen"
    );
    let url = format!("mqtts://localhost:{}", port.addr().port());
    let config = dir.write(
        "manager.toml",
        &format!(
            "[http]\nlisten = \"{ANY_PORT}\"\n[mqtt]\nurl = \"{url}\"\nca_file = \"{}\"\n\
             username = \"verge-manager\"\npassword = \"mgr\"\n\
             [[agents]]\nid = \"edge-1\"\nsecret = \"s1\"\n[[agents]]\nid = \"edge-2\"\nsecret = \"s2\"\n",
            pki.ca.display()
        ),
    );
    let (_manager, bound) = start_manager(&dir, &config);
    let http = listener(&bound, "http");
    right_ca_connects_wrong_ca_is_refused(&dir, http, &url, &pki);
}
