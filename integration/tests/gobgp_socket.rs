//! gobgpd's API on a unix socket, as the shipped manifests and the compose lab have it, in the netns
//! lab: gobgpd runs as its own user (10179) through the image's entrypoint, its API on a socket in a
//! world-writable directory (as a pod's emptyDir is), on no TCP port. A process of another uid in
//! the speaker's namespace reaches nothing: no TCP port answers, the socket refuses it. The gobgp
//! CLI with the socket's group, and herald as its own user (10151) with that group as a
//! supplementary one (the pod's supplementalGroups), can: herald's routes reach host1's kernel.
//! Needs root (namespaces, setpriv).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use herald_integration::lab::{ApiSocket, Lab, LabOptions};
use herald_integration::lab_herald::{LAB_RANGES, lab_final_table, lab_state, write_atomically};
use herald_integration::process::{Herald, heraldctl, wait_until};

const GOBGPD_USER: ApiSocket = ApiSocket {
    uid: 10179,
    gid: 10179,
};
const HERALD_UID: u32 = 10151;
/// Another user of the node: neither gobgpd's nor in its group.
const STRANGER: u32 = 65534;

/// Debian's, which any user may run (scripts/install-deps.sh).
const PYTHON: &str = "/usr/bin/python3";
/// connect(2) to 127.0.0.1:50051, gobgpd's API port before it moved to the socket.
const CONNECT_TCP: &str =
    "import socket; socket.create_connection(('127.0.0.1', 50051), timeout=5)";
/// connect(2) to the unix socket given as argument.
const CONNECT_UNIX: &str = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])";

/// Runs `args` in the speaker's namespace as `uid`:`gid` with `groups` as supplementary groups.
fn as_user(lab: &Lab, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> (bool, String) {
    let mut command = Command::new("ip");
    command.args([
        "netns",
        "exec",
        lab.pool_ns(),
        "setpriv",
        &format!("--reuid={uid}"),
        &format!("--regid={gid}"),
    ]);
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        command.arg(format!(
            "--groups={}",
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    let out = command.args(args).output().expect("setpriv runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn only_herald_and_the_sockets_group_reach_gobgpds_api() {
    let lab = Lab::start_with(LabOptions {
        api_socket: Some(GOBGPD_USER),
        ..LabOptions::default()
    })
    .expect("lab");
    let socket = lab.api_socket_of(0).expect("the lab's API socket");
    let target = format!("unix://{}", socket.display());

    // The socket: gobgpd's, rw for its group, nothing for others (gobgpd-start's umask).
    let meta = std::fs::metadata(&socket).expect("the socket exists");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o777),
        (10179, 10179, 0o660),
        "owner, group, mode of {}",
        socket.display()
    );
    let dir_mode = std::fs::metadata(socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        dir_mode, 0o777,
        "the socket's directory is open to all, as an emptyDir: the socket's mode alone keeps others out"
    );

    // No TCP port of gobgpd's API: gobgpd listens on BGP's port only, and the old API port is shut.
    let listeners = String::from_utf8(
        Command::new("ip")
            .args(["netns", "exec", lab.pool_ns(), "ss", "-Htlnp"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let gobgpd_ports: Vec<&str> = listeners
        .lines()
        .filter(|l| l.contains("\"gobgpd\""))
        .filter_map(|l| l.split_whitespace().nth(3)?.rsplit(':').next())
        .collect();
    assert!(
        !gobgpd_ports.is_empty() && gobgpd_ports.iter().all(|p| *p == "179"),
        "gobgpd listens on TCP ports {gobgpd_ports:?}, want BGP's 179 only:\n{listeners}"
    );
    let (ok, out) = as_user(&lab, STRANGER, STRANGER, &[], &[PYTHON, "-c", CONNECT_TCP]);
    assert!(
        !ok && out.contains("ConnectionRefusedError"),
        "a stranger on 127.0.0.1:50051: ok={ok} {out}"
    );

    // A stranger on the socket: connect(2) refused by the socket's mode; the gobgp CLI gets nowhere.
    let (ok, out) = as_user(
        &lab,
        STRANGER,
        STRANGER,
        &[],
        &[PYTHON, "-c", CONNECT_UNIX, socket.to_str().unwrap()],
    );
    assert!(
        !ok && out.contains("PermissionError"),
        "uid {STRANGER} connecting to the socket: ok={ok} {out}"
    );
    let (ok, out) = as_user(
        &lab,
        STRANGER,
        STRANGER,
        &[],
        &["gobgp", "--target", &target, "global"],
    );
    assert!(!ok, "uid {STRANGER}'s gobgp CLI on the socket: {out}");
    // ... and it cannot announce a prefix either (what an open API would let anyone do).
    let (ok, out) = as_user(
        &lab,
        STRANGER,
        STRANGER,
        &[],
        &[
            "gobgp",
            "--target",
            &target,
            "global",
            "rib",
            "add",
            "0.0.0.0/0",
            "-a",
            "ipv4",
        ],
    );
    assert!(!ok, "uid {STRANGER} added a default route: {out}");
    assert!(
        !lab.gobgp(&["global", "rib", "-a", "ipv4"])
            .unwrap()
            .contains("0.0.0.0/0"),
        "gobgpd holds the stranger's route"
    );

    // The gobgp CLI of another uid with the socket's group as its group: in.
    let (ok, out) = as_user(
        &lab,
        STRANGER,
        GOBGPD_USER.gid,
        &[],
        &["gobgp", "--target", &target, "global"],
    );
    assert!(
        ok && out.contains("64512"),
        "the gobgp CLI with group {}: ok={ok} {out}",
        GOBGPD_USER.gid
    );

    // herald as its own user, gobgpd's group a supplementary one: its plan reaches host1's kernel.
    let dir = lab.dir().join("herald");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.join("cluster-state.yaml");
    write_atomically(&state, &lab_state()).unwrap();
    let start = |name: &str, port: u16, groups: &str| {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!("{LAB_RANGES}source: {{file: {}}}\ngobgp: {{address: '{}'}}\napi: {{listen: '127.0.0.1:{port}'}}\n", state.display(), lab.gobgp_address_of(0)),
        )
        .unwrap();
        let wrap = [
            "ip",
            "netns",
            "exec",
            lab.pool_ns(),
            "setpriv",
            &format!("--reuid={HERALD_UID}"),
            &format!("--regid={HERALD_UID}"),
            groups,
        ];
        Herald::start(&config, port, dir.join(format!("{name}.log")), &wrap).unwrap()
    };
    let herald = start("herald", 50151, &format!("--groups={}", GOBGPD_USER.gid));
    let expected = lab_final_table("198.19.0.2");
    if let Err(e) = lab.wait_for_table(|t| *t == expected, Duration::from_secs(20)) {
        panic!(
            "herald over the socket: {e}\n{}\n--- herald ---\n{}",
            lab.diagnostics(),
            herald.log_text()
        );
    }
    let status = String::from_utf8_lossy(
        &heraldctl(
            &herald.api,
            &["status"],
            &["ip", "netns", "exec", lab.pool_ns()],
        )
        .stdout,
    )
    .into_owned();
    assert!(
        status.contains(&target) && status.contains("(reachable)"),
        "herald's status:\n{status}"
    );

    // The same herald without the group: refused, and it says so.
    let outsider = start("outsider", 50161, "--clear-groups");
    let said = wait_until(
        Duration::from_secs(20),
        "the outsider herald's status to show the refusal",
        || {
            let out = heraldctl(
                &outsider.api,
                &["status"],
                &["ip", "netns", "exec", lab.pool_ns()],
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // The neighbors' alarm (asked at each status) may name the refusal before the
            // reconciler's first call has failed: wait for the reconciler's word too.
            (text.to_lowercase().contains("permission denied") && text.contains("UNREACHABLE"))
                .then_some(text)
        },
    );
    match said {
        Ok(text) => {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("gobgpd:")
                        && l.to_lowercase().contains("permission denied")),
                "{text}"
            )
        }
        Err(e) => panic!("{e}\n--- outsider herald ---\n{}", outsider.log_text()),
    }
}
