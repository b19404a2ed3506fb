//! The local control plane's script (`hack/plane.sh`): a plane whose owner
//! was killed is cleared by the next `up` of the same state folder, and
//! `down` leaves no process and no folder behind.

use std::{path::Path, process::Command, time::Duration};

use crate::chaos::{OwnPlane, plane_script};

const PROCESSES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// The pids `up` recorded in a state folder.
fn pids(state: &Path) -> Vec<u32> {
    PROCESSES
        .iter()
        .map(|name| {
            std::fs::read_to_string(state.join(format!("{name}.pid")))
                .unwrap_or_else(|e| panic!("{name}.pid: {e}"))
                .trim()
                .parse()
                .expect("a pid")
        })
        .collect()
}

/// Whether a process runs: it exists and is not a zombie (one that ended
/// and that no parent has reaped yet).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z")
        })
        .unwrap_or(false)
}

/// Waits up to 10 s for every one of `pids` to end.
fn all_end(pids: &[u32]) -> bool {
    for _ in 0..100 {
        if !pids.iter().any(|p| running(*p)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
#[ignore = "needs the local Kubernetes binaries: run hack/test.sh"]
fn up_clears_a_stale_plane_and_down_leaves_nothing() {
    let Some(plane) = OwnPlane::start() else {
        eprintln!("skipped: no local Kubernetes binaries (hack/build-kube.sh builds them)");
        return;
    };
    let first = pids(&plane.state);
    // Positive control: the check below would see them run.
    assert!(first.iter().all(|p| running(*p)), "{first:?} run");

    // Its owner gone without `down` (killed outright), the next `up` of the
    // same folder stops that plane and starts a new one.
    let up = Command::new(plane_script())
        .arg("up")
        .arg(&plane.state)
        .output()
        .expect("plane.sh runs");
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(all_end(&first), "the stale plane {first:?} still runs");
    let second = pids(&plane.state);
    assert!(second.iter().all(|p| running(*p) && !first.contains(p)));

    let state = plane.state.clone();
    drop(plane);
    assert!(all_end(&second), "{second:?} still run after down");
    assert!(!state.exists(), "{} is left behind", state.display());
}
