//! The command line as a user runs it: `check` against the stand-in (no
//! cluster needed), `renew` with a kubeconfig against the real API server.

use std::{
    io::Write as _,
    process::{Command, Output},
    time::Duration,
};

use serde_json::json;

use crate::harness::{Cluster, eventually, jwt_claims, spec_for, standin_with};

const HOUR: Duration = Duration::from_secs(3600);
const BINARY: &str = env!("CARGO_BIN_EXE_runai-token-sync");

/// A file holding `text`, removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("runai-cli-{}-{name}", std::process::id()));
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("a temporary file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// Several threads: the stand-in serves while a command runs and is waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn check_reports_success_rejection_and_an_untrusted_certificate() {
    let standin = standin_with("app-check", "s3cr3t-check", HOUR).await;
    let url = standin.url();
    // A trailing newline, as `echo` leaves it: trimmed as the controller does.
    let secret = TempFile::new("secret", "s3cr3t-check\n");
    let wrong = TempFile::new("wrong", "not-the-secret");
    let ca = TempFile::new("ca.pem", standin.ca_pem());
    let secret_path = secret.0.to_str().unwrap();
    let ca_path = ca.0.to_str().unwrap();

    // Success: the generation, the lifetime, the expiry, the subject; no token.
    let ok = run(&[
        "check",
        "--url",
        &url,
        "--client-id",
        "app-check",
        "--client-secret-file",
        secret_path,
        "--ca-file",
        ca_path,
    ]);
    let out = text(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{out}{}", text(&ok.stderr));
    // --token-api defaults to Auto: V2 where it is served, and says so.
    assert!(out.contains("token API: V2 (POST "), "{out}");
    assert!(out.contains("/api/v2/token)"), "{out}");
    let lifetime: i64 = out
        .lines()
        .find_map(|l| l.strip_prefix("lifetime: "))
        .and_then(|l| l.strip_suffix(" s"))
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("a lifetime in {out}"));
    assert!((3590..=3600).contains(&lifetime), "{out}");
    assert!(out.contains("expires at: 20"), "{out}");
    assert!(out.contains("subject: app-check\n"), "{out}");
    assert!(!out.contains("access token"), "{out}");
    assert_eq!(standin.requests("app-check"), 1);

    // --show-token prints the token, a real one for this client.
    let shown = run(&[
        "check",
        "--url",
        &url,
        "--token-api",
        "V1",
        "--client-id",
        "app-check",
        "--client-secret-file",
        secret_path,
        "--ca-file",
        ca_path,
        "--show-token",
    ]);
    let out = text(&shown.stdout);
    assert_eq!(shown.status.code(), Some(0), "{out}{}", text(&shown.stderr));
    assert!(out.contains("token API: V1 (POST "), "{out}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("access token: "))
        .expect("the token");
    assert_eq!(jwt_claims(token)["sub"], "app-check");

    // Rejected credentials: their own status, and the secret never printed.
    let rejected = run(&[
        "check",
        "--url",
        &url,
        "--client-id",
        "app-check",
        "--client-secret-file",
        wrong.0.to_str().unwrap(),
        "--ca-file",
        ca_path,
    ]);
    let err = text(&rejected.stderr);
    assert_eq!(rejected.status.code(), Some(4), "{err}");
    assert!(err.contains("rejected the client credentials"), "{err}");
    assert!(!err.contains("not-the-secret") && rejected.stdout.is_empty());

    // Auto where only V1 is served: V1 answers, and is named.
    standin.set_client_with(
        "app-old",
        runai_standin::Client {
            serves: runai_standin::Serves::OnlyV1(runai_standin::Removed::NotFoundHtml),
            ..runai_standin::Client::new("s3cr3t-check", Duration::from_secs(3600))
        },
    );
    let old = run(&[
        "check",
        "--url",
        &url,
        "--client-id",
        "app-old",
        "--client-secret-file",
        secret_path,
        "--ca-file",
        ca_path,
    ]);
    let out = text(&old.stdout);
    assert_eq!(old.status.code(), Some(0), "{out}{}", text(&old.stderr));
    assert!(
        out.contains("token API: V1 (POST ") && out.contains("/api/v1/token)"),
        "{out}"
    );
    // An explicit V2 there: its own status, and what to set.
    let explicit = run(&[
        "check",
        "--url",
        &url,
        "--token-api",
        "V2",
        "--client-id",
        "app-old",
        "--client-secret-file",
        secret_path,
        "--ca-file",
        ca_path,
    ]);
    let err = text(&explicit.stderr);
    assert_eq!(explicit.status.code(), Some(15), "{err}");
    assert!(
        err.contains("HTTP 404") && err.contains("V1 or Auto"),
        "{err}"
    );

    // TLS without the CA: its own status and the hint.
    let untrusted = run(&[
        "check",
        "--url",
        &url,
        "--client-id",
        "app-check",
        "--client-secret-file",
        secret_path,
    ]);
    let err = text(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(11), "{err}");
    assert!(err.contains("TLS handshake"), "{err}");

    // The controller's URL rules: http:// refused before any request.
    let before = standin.total_requests();
    let insecure = run(&[
        "check",
        "--url",
        "http://acme.run.ai",
        "--client-id",
        "app-check",
        "--client-secret-file",
        secret_path,
    ]);
    assert_eq!(
        insecure.status.code(),
        Some(3),
        "{}",
        text(&insecure.stderr)
    );
    assert!(text(&insecure.stderr).contains("http:// is refused"));
    assert_eq!(standin.total_requests(), before);

    // The statuses are documented in --help.
    let help = text(&run(&["check", "--help"]).stdout);
    for line in [
        "Exit status:",
        " 4  the credentials were rejected",
        "11  TLS failed",
    ] {
        assert!(help.contains(line), "{line:?} in {help}");
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes API server: run hack/test.sh"]
async fn renew_requests_a_refresh_by_name_and_by_selector() {
    let cluster = Cluster::new("renew").await;
    let standin = standin_with("app-renew", "s3cr3t-renew", HOUR).await;
    standin.set_client("app-other", "s3cr3t-other", HOUR);
    cluster
        .put_credentials("runai-client", "app-renew", "s3cr3t-renew")
        .await;
    cluster
        .put_credentials("other-client", "app-other", "s3cr3t-other")
        .await;
    let _controller = cluster.start_controller();
    cluster
        .create_credential("one", spec_for(&standin, "runai-client"))
        .await;
    let mut labelled = spec_for(&standin, "other-client");
    labelled["target"] = json!({"name": "two"});
    cluster.create_credential("two", labelled).await;
    cluster
        .patch_credential("two", json!({"metadata": {"labels": {"team": "ml"}}}))
        .await;
    cluster.wait_ready("one").await;
    cluster.wait_ready("two").await;
    let first = cluster.token("one", "accessToken").await.unwrap();
    let kubeconfig = cluster.kubeconfig.to_str().unwrap().to_owned();
    let renew = |args: &[&str]| {
        Command::new(BINARY)
            .arg("renew")
            .args(args)
            .args(["-n", &cluster.namespace])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .expect("the binary runs")
    };

    // By name: one more request, for that application only.
    let out = renew(&["one"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "runaicredential/one refresh requested\n");
    eventually(Duration::from_secs(15), "a new token in one", || async {
        cluster
            .token("one", "accessToken")
            .await
            .filter(|t| *t != first)
    })
    .await;
    assert_eq!(standin.requests("app-renew"), 2);
    assert_eq!(standin.requests("app-other"), 1);

    // By label selector: only the labelled one.
    let out = renew(&["-l", "team=ml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "runaicredential/two refresh requested\n");
    eventually(Duration::from_secs(15), "two refreshed", || async {
        (standin.requests("app-other") == 2).then_some(())
    })
    .await;
    assert_eq!(standin.requests("app-renew"), 2);

    // A name that does not exist: reported, non-zero.
    let out = renew(&["missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("runaicredential/missing"));
    // Nothing selected at all is a usage error.
    assert_eq!(renew(&[]).status.code(), Some(2));
}
