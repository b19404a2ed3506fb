//! Run:ai's own Python SDK (`runapy`, pinned, installed by
//! `hack/tools.sh` as `runapy-python`) as a real client: its own token
//! request against the stand-in, and the token a RunaiCredential's Secret
//! holds, before and after a refresh, listing clusters through its API
//! classes (`tests/e2e/runapy_client.py`).

use std::{path::PathBuf, process::Command, time::Duration};

use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::harness::{Cluster, eventually, spec_for, standin_with};

/// The Python of the virtualenv that holds runapy.
fn runapy_python() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("runapy-python"))
        .find(|p| p.exists())
        .expect("runapy-python on PATH: run hack/tools.sh and put its output on PATH")
}

/// Runs the runapy client script; its exit status and output. Off the
/// test's runtime, which serves the stand-in meanwhile.
async fn runapy(args: &[&str]) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/runapy_client.py");
    let mut command = Command::new(runapy_python());
    command
        .arg(script)
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy");
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the blocking task")
        .expect("runapy-python runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A file in a fresh temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, content: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!("runapy-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn runapy_uses_the_stand_in_and_the_tokens_the_controller_writes() {
    let standin = standin_with("sdk-app", "s3cr3t-sdk", Duration::from_secs(3600)).await;
    let ca = TempFile::new("ca.pem", standin.ca_pem());
    let secret = TempFile::new("secret", "s3cr3t-sdk");
    let url = standin.url();

    // (a) runapy's own token request (app_token to /api/v1/token), as it
    // sends it to Run:ai, then a call with its token.
    let (ok, out) = runapy(&["credentials", &url, ca.path(), "sdk-app", secret.path()]).await;
    assert!(ok && out.starts_with("200 stand-in-cluster"), "{out}");
    assert_eq!(standin.requests("sdk-app"), 1);
    assert_eq!(standin.api_calls(), (1, 0));

    // (b) The token a Ready credential's Secret holds, as a volume mounts it.
    let cluster = Cluster::new("runapy").await;
    cluster
        .put_credentials("sdk-creds", "sdk-app", "s3cr3t-sdk")
        .await;
    let _controller = cluster.start_controller();
    cluster
        .create_credential("sdk", spec_for(&standin, "sdk-creds"))
        .await;
    cluster.wait_ready("sdk").await;
    let first = cluster.token("sdk", "accessToken").await.unwrap();
    let mounted = TempFile::new("accessToken", &first);
    let (ok, out) = runapy(&["token-file", &url, ca.path(), mounted.path()]).await;
    assert!(ok && out.starts_with("200 stand-in-cluster"), "{out}");

    // After a forced refresh, the new token from the Secret works too.
    let patch =
        json!({"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "sdk-1"}}});
    cluster
        .credentials()
        .patch("sdk", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let second = eventually(Duration::from_secs(30), "a new token", || async {
        cluster
            .token("sdk", "accessToken")
            .await
            .filter(|t| *t != first)
    })
    .await;
    std::fs::write(&mounted.0, &second).unwrap();
    let (ok, out) = runapy(&["token-file", &url, ca.path(), mounted.path()]).await;
    assert!(ok && out.starts_with("200 stand-in-cluster"), "{out}");
    assert_eq!(standin.api_calls(), (3, 0));

    // Positive control: a token the stand-in did not issue is refused.
    std::fs::write(&mounted.0, "not.a-token.at-all").unwrap();
    let (ok, out) = runapy(&["token-file", &url, ca.path(), mounted.path()]).await;
    assert!(!ok && out.contains("401"), "{out}");
    assert_eq!(standin.api_calls(), (3, 1));
}
