//! A real podman for container tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;

/// podman set up as this machine needs it (runc, ulimits; see reference/kernel-notes.md), an
/// image built from busybox-static, and the API service on a private socket. Removed on drop.
pub struct Podman {
    pub dir: TempDir,
    pub tag: String,
    service: Option<Child>,
    names: Vec<String>,
}

impl Podman {
    pub fn new() -> Podman {
        Self::with_files(&[])
    }

    /// Like `new`, with extra files copied into the image: (host path, path in the image).
    pub fn with_files(files: &[(&Path, &str)]) -> Podman {
        Self::set_up(files, true)
    }

    /// podman as it mostly runs: daemonless, no API service, no socket anywhere.
    pub fn without_api() -> Podman {
        Self::set_up(&[], false)
    }

    fn set_up(files: &[(&Path, &str)], api: bool) -> Podman {
        let dir = TempDir::new("podman");
        let conf = dir.path().join("containers.conf");
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n[engine]\nruntime = \"runc\"\n",
        )
        .unwrap();
        // SAFETY: set before any thread of this test reads the environment for podman.
        std::env::set_var("CONTAINERS_CONF", &conf);
        let rootfs = dir.path().join("rootfs/bin");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("busybox")).unwrap();
        for (src, dest) in files {
            let to = dir.path().join("rootfs").join(dest.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(src, &to).unwrap();
        }
        let tag = format!("localhost/bq-bb:{}", std::process::id());
        sh(&format!(
            "tar -C {}/rootfs -c . | podman import - {tag} >/dev/null",
            dir.path().display()
        ));
        let sock = dir.path().join("podman.sock");
        if !api {
            return Podman {
                dir,
                tag,
                service: None,
                names: Vec::new(),
            };
        }
        let service = Command::new("podman")
            .current_dir(dir.path())
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", sock.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || sock.exists()),
            "podman API socket"
        );
        Podman {
            dir,
            tag,
            service: Some(service),
            names: Vec::new(),
        }
    }

    pub fn socket(&self) -> String {
        self.dir.path().join("podman.sock").display().to_string()
    }

    /// `podman run -d --name <name> <extra> <image> <cmd>`; returns the full id. Run from the
    /// temp dir: conmon writes a file named `oom` into its working directory when the
    /// container is OOM-killed.
    pub fn run(&mut self, name: &str, extra: &str, cmd: &str) -> String {
        self.names.push(name.to_string());
        sh(&format!(
            "cd {} && podman run -d --name {name} --network=none {extra} {} {cmd}",
            self.dir.path().display(),
            self.tag
        ))
        .trim()
        .to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for n in &self.names {
            sh_quiet(&format!("podman rm -f -t 0 {n}"));
        }
        sh_quiet(&format!("podman rmi -f {}", self.tag));
        if let Some(service) = &mut self.service {
            let _ = service.kill();
            let _ = service.wait();
        }
    }
}
