//! The Debian package, for real: `deploy/deb/build.sh` packs the test build of the binary, `dpkg -i`
//! installs it on this machine, the installed `bianque check` runs from `/usr/bin` on the
//! installed config, and `dpkg -r` / `dpkg --purge` take it away again.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Purges the package on drop, so a failing test leaves nothing installed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "bianque"]).output();
    }
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "bianque"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

#[test]
fn the_deb_installs_checks_from_usr_bin_and_removes_cleanly() {
    assert!(
        !Path::new("/usr/bin/bianque").exists() && !installed(),
        "bianque is already installed here; this test installs and removes the package itself"
    );
    let out = TempDir::new("deb");
    let deb = sh(&format!(
        "DEB_COMPRESSION=none {}/deploy/deb/build.sh {BIN} {}",
        env!("CARGO_MANIFEST_DIR"),
        out.path().display()
    ));
    let deb = deb.trim();
    assert!(deb.ends_with("_amd64.deb"), "{deb}");

    let contents = sh(&format!("dpkg-deb --contents {deb}"));
    for path in [
        "./usr/bin/bianque",
        "./lib/systemd/system/bianque.service",
        "./etc/bianque/bianque.toml",
        "./usr/share/man/man1/bianque.1.gz",
        "./usr/share/bash-completion/completions/bianque",
        "./usr/share/doc/bianque/examples/bianque.example.toml",
    ] {
        assert!(
            contents.contains(path),
            "{path} missing from the package:\n{contents}"
        );
    }
    let info = sh(&format!("dpkg-deb --field {deb} Package Version Depends"));
    assert!(info.contains("Package: bianque"), "{info}");
    assert!(
        info.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );

    let _guard = Installed;
    sh(&format!("dpkg -i {deb}"));
    assert!(installed());
    // The unit's user exists and can read the config it is started with.
    sh("getent passwd bianque");
    let group = sh("stat -c %G /etc/bianque/bianque.toml");
    assert_eq!(group.trim(), "bianque");
    sh("systemd-analyze verify /lib/systemd/system/bianque.service");
    sh("man -l /usr/share/man/man1/bianque.1.gz > /dev/null");

    let check = Command::new("/usr/bin/bianque")
        .args(["check", "--config", "/etc/bianque/bianque.toml", "--json"])
        .output()
        .expect("run the installed bianque");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "installed `bianque check` exit {:?}: {text}{}",
        check.status.code(),
        String::from_utf8_lossy(&check.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("check --json");
    assert_eq!(v["ok"], true, "{text}");
    let tracers = v["tracers"].as_array().map_or(0, |t| t.len());
    assert!(tracers > 30, "check listed {tracers} tracers: {text}");

    // Remove keeps the conffile (Debian policy); purge takes it and the user away.
    sh("dpkg -r bianque");
    assert!(!Path::new("/usr/bin/bianque").exists());
    assert!(Path::new("/etc/bianque/bianque.toml").exists());
    sh("dpkg --purge bianque");
    assert!(!Path::new("/etc/bianque/bianque.toml").exists());
    assert!(!installed());
    let user = Command::new("getent")
        .args(["passwd", "bianque"])
        .status()
        .expect("getent");
    assert!(!user.success(), "the bianque user outlived the purge");
}
