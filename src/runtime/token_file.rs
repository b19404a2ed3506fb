//! The bearer token of a kubeconfig's `tokenFile`, or of the in-cluster
//! service account, re-read as it rotates.
//!
//! The kubelet replaces a projected service-account token long before it
//! expires (at 80 % of its lifetime), and an administrator may swap the
//! file for another account's token; a client that read it once gets 401s
//! later. kube's own reading of the file takes whatever it finds, so an
//! empty file (caught between a truncation and a write) would leave the
//! controller without credentials. Here the file is read again every
//! [`REREAD`] and after every 401, and a read that fails or finds nothing
//! keeps the last good token (api.md, "Talking to the API server: faults";
//! client-go does the same, kubernetes/kubernetes#68164).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode, header::AUTHORIZATION};
use tracing::warn;

use crate::error::Error;

/// How often the file is read again (at most; a 401 makes the next request
/// read it at once).
pub const REREAD: Duration = Duration::from_secs(10);

/// The token file and the last good token read from it.
#[derive(Clone, Debug)]
pub struct TokenFile {
    path: PathBuf,
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    /// `Bearer <token>`, marked sensitive so that no debug output shows it.
    header: HeaderValue,
    /// When the file was last read; `None`: read it on the next request.
    read_at: Option<Instant>,
    /// A failed read was reported, and not yet followed by a good one.
    reported: bool,
}

/// What a file holds as a token: its text without surrounding white
/// space, as a sensitive `Authorization` value; `None` when it is empty or
/// cannot be a header value.
fn bearer(text: &str) -> Option<HeaderValue> {
    let token = text.trim();
    if token.is_empty() {
        return None;
    }
    let mut header = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    header.set_sensitive(true);
    Some(header)
}

impl TokenFile {
    /// Reads the token at `path` for the first time.
    ///
    /// # Errors
    ///
    /// [`Error::Startup`] when the file cannot be read, is empty, or holds
    /// what cannot be a bearer token (the error names the file, never its
    /// content).
    pub fn open(path: &Path) -> Result<TokenFile, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Startup(format!(
                "cannot read the API server token file {}: {e}",
                path.display()
            ))
        })?;
        let header = bearer(&text).ok_or_else(|| {
            Error::Startup(format!(
                "the API server token file {} is empty or does not hold a bearer token",
                path.display()
            ))
        })?;
        Ok(TokenFile {
            path: path.to_owned(),
            state: Arc::new(Mutex::new(State {
                header,
                read_at: Some(Instant::now()),
                reported: false,
            })),
        })
    }

    /// The `Authorization` value to send now, reading the file again when
    /// it is due; the last good token when the file cannot be read or is
    /// empty.
    pub fn header(&self) -> HeaderValue {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.read_at.is_none_or(|at| at.elapsed() >= REREAD) {
            state.read_at = Some(Instant::now());
            match std::fs::read_to_string(&self.path).map(|text| bearer(&text)) {
                Ok(Some(header)) => {
                    state.header = header;
                    state.reported = false;
                }
                failed => {
                    if !state.reported {
                        let why = match failed {
                            Err(e) => e.to_string(),
                            Ok(_) => "it is empty".to_owned(),
                        };
                        warn!(file = %self.path.display(), "cannot use the API server token file ({why}); keeping the last token read from it");
                        state.reported = true;
                    }
                }
            }
        }
        state.header.clone()
    }

    /// The API server refused the token: read the file again on the next
    /// request, whatever its age (it may have just rotated).
    pub fn refused(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read_at = None;
    }
}

/// Adds the token of a [`TokenFile`] to every request of the Kubernetes
/// client; passes requests as they are without one (other kinds of
/// authentication, which kube handles).
#[derive(Clone, Debug)]
pub struct TokenFileLayer(pub Option<TokenFile>);

impl<S> tower::Layer<S> for TokenFileLayer {
    type Service = TokenFileService<S>;

    fn layer(&self, inner: S) -> TokenFileService<S> {
        TokenFileService {
            inner,
            file: self.0.clone(),
        }
    }
}

/// The client's service, authenticating each request with the token file.
#[derive(Debug)]
pub struct TokenFileService<S> {
    inner: S,
    file: Option<TokenFile>,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for TokenFileService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        if let Some(file) = &self.file {
            request.headers_mut().insert(AUTHORIZATION, file.header());
        }
        let file = self.file.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answered = answer.await;
            if let (Some(file), Ok(response)) = (file, &answered)
                && response.status() == StatusCode::UNAUTHORIZED
            {
                file.refused();
            }
            answered
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(text: &str) -> (tempfile_path::Guard, TokenFile) {
        let guard = tempfile_path::Guard::new(text);
        let file = TokenFile::open(&guard.0).unwrap();
        (guard, file)
    }

    /// A file of its own under the system's temporary folder, removed on
    /// drop.
    mod tempfile_path {
        pub struct Guard(pub std::path::PathBuf);
        impl Guard {
            pub fn new(text: &str) -> Guard {
                let path = std::env::temp_dir().join(format!(
                    "rts-token-file-{}-{}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::write(&path, text).unwrap();
                Guard(path)
            }
        }
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn a_rotated_file_is_read_again_and_an_empty_or_missing_one_keeps_the_last_token() {
        let (guard, file) = file_with("first-token\n");
        assert_eq!(file.header(), "Bearer first-token");
        assert!(file.header().is_sensitive());
        // Not read again before it is due...
        std::fs::write(&guard.0, "second-token").unwrap();
        assert_eq!(file.header(), "Bearer first-token");
        // ...and at once after a 401.
        file.refused();
        assert_eq!(file.header(), "Bearer second-token");
        // Emptied, or caught half-written as white space: the last good one.
        for text in ["", " \n"] {
            std::fs::write(&guard.0, text).unwrap();
            file.refused();
            assert_eq!(file.header(), "Bearer second-token");
        }
        // Gone for a while: the same; back: read.
        std::fs::remove_file(&guard.0).unwrap();
        file.refused();
        assert_eq!(file.header(), "Bearer second-token");
        std::fs::write(&guard.0, "third-token").unwrap();
        file.refused();
        assert_eq!(file.header(), "Bearer third-token");
    }

    #[test]
    fn a_file_that_cannot_give_a_first_token_is_an_error_naming_it() {
        let guard = tempfile_path::Guard::new("  \n");
        let err = TokenFile::open(&guard.0).unwrap_err().to_string();
        assert!(err.contains(&guard.0.display().to_string()), "{err}");
        assert!(err.contains("empty"), "{err}");
        let missing = guard.0.with_extension("missing");
        assert!(TokenFile::open(&missing).is_err());
        // A header cannot hold a line break inside the token.
        let broken = tempfile_path::Guard::new("abc\ndef");
        assert!(TokenFile::open(&broken.0).is_err());
    }
}
