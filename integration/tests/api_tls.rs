//! herald's API over TLS with client-certificate authentication, through heraldctl.
//! Certificates are made for the test with the openssl CLI (installed with Debian's base system).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use herald_integration::process::{Herald, free_port, heraldctl, repo_root, wait_until};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate signed by it for `name` (with `san` as subjectAltName).
fn issue(dir: &Path, ca: &str, name: &str, san: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

#[test]
fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    issue(d, "ca", "server", "IP:127.0.0.1,DNS:localhost");
    issue(d, "ca", "client", "DNS:heraldctl");
    issue(d, "other-ca", "intruder", "DNS:heraldctl");
    let port = free_port();
    let config = d.join("herald.yaml");
    std::fs::write(
        &config,
        format!(
            "serviceClusterIPs: [{{cidr: 198.19.32.0/20}}]\nsource: {{file: {state}}}\n\
             api: {{listen: '127.0.0.1:{port}', tls: {{certFile: {d}/server.crt, keyFile: {d}/server.key, clientCaFile: {d}/ca.crt}}}}\n",
            state = repo_root().join("examples/yaobank/cluster-state.yaml").display(),
            d = d.display()
        ),
    )
    .unwrap();
    let herald = Herald::start(&config, port, d.join("herald.log"), &[]).unwrap();
    let server = format!("https://127.0.0.1:{port}");
    let path = |f: &str| d.join(f).to_string_lossy().into_owned();
    let ctl = |extra: &[&str]| {
        let mut args = extra.to_vec();
        args.push("status");
        let out = heraldctl(&server, &args, &[]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ca, cert, key) = (path("ca.crt"), path("client.crt"), path("client.key"));
    let trusted = [
        "--ca",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];
    let answer = wait_until(Duration::from_secs(10), "herald over TLS", || {
        let (ok, text) = ctl(&trusted);
        (ok && text.contains("generation 1")).then_some(text)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", ctl(&trusted), herald.log_text()));
    assert!(answer.contains("(synced)"), "{answer}");

    // No client certificate, one from another CA, a server not trusted, plain text: all refused.
    let (other_cert, other_key, other_ca) = (
        path("intruder.crt"),
        path("intruder.key"),
        path("other-ca.crt"),
    );
    let refused: [&[&str]; 3] = [
        &["--ca", ca.as_str()],
        &[
            "--ca",
            ca.as_str(),
            "--cert",
            other_cert.as_str(),
            "--key",
            other_key.as_str(),
        ],
        &[
            "--ca",
            other_ca.as_str(),
            "--cert",
            cert.as_str(),
            "--key",
            key.as_str(),
        ],
    ];
    for args in refused {
        let (ok, text) = ctl(args);
        assert!(!ok, "{args:?} was accepted: {text}");
    }
    let plain = heraldctl(&format!("http://127.0.0.1:{port}"), &["status"], &[]);
    assert!(!plain.status.success(), "plain text accepted");
}
