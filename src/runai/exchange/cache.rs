//! The token cache of a group: the last token obtained for it, or where it
//! is kept when the group does not keep its text.

use jiff::Timestamp;

use crate::api::TokenApi;

/// A group's token. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupToken {
    pub access_token: String,
    /// When it was obtained, to the second.
    pub issued_at: Timestamp,
    /// When it expires, if known.
    pub expires_at: Option<Timestamp>,
    /// Increases with every token the exchange takes in; 0 for none.
    pub serial: u64,
    /// Obtained by a request of this process (not recovered from a Secret).
    pub requested: bool,
    /// The token API generation that issued it, when known.
    pub token_api: Option<TokenApi>,
}

impl std::fmt::Debug for GroupToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupToken")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("serial", &self.serial)
            .field("requested", &self.requested)
            .field("token_api", &self.token_api)
            .finish_non_exhaustive()
    }
}

/// A Secret that holds a group's token under the data key `key`, as
/// `namespace/name/key` in one allocation (none of the three may contain a
/// `/`: Kubernetes object names and Secret data keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenHolder(Box<str>);

impl TokenHolder {
    /// The Secret `name` in `namespace`, with the token under `key`.
    #[must_use]
    pub fn new(namespace: &str, name: &str, key: &str) -> Self {
        TokenHolder(format!("{namespace}/{name}/{key}").into_boxed_str())
    }

    fn part(&self, n: usize) -> &str {
        self.0.splitn(3, '/').nth(n).unwrap_or_default()
    }

    /// The Secret's namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.part(0)
    }

    /// The Secret's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.part(1)
    }

    /// The data key of the token.
    #[must_use]
    pub fn key(&self) -> &str {
        self.part(2)
    }
}

/// A group's token as the group keeps it.
struct Held {
    /// `None` while the group serves one member whose Secret holds the
    /// token.
    text: Option<String>,
    /// Tells whether a text offered is this token without keeping it.
    fingerprint: u64,
    issued_at: Timestamp,
    expires_at: Option<Timestamp>,
    serial: u64,
    requested: bool,
    token_api: Option<TokenApi>,
}

/// The fingerprint of a token's text: only ever compared with another
/// fingerprint of this process, never shown or kept elsewhere.
fn fingerprint(text: &str) -> u64 {
    use std::hash::BuildHasher as _;
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(Default::default).hash_one(text)
}

/// The token cache of one group.
#[derive(Default)]
pub(super) struct TokenCache {
    held: Option<Held>,
    /// A Secret known to hold `held` ([`TokenCache::held_in`]).
    holder: Option<TokenHolder>,
}

impl TokenCache {
    /// The group's token, when its text is kept.
    pub(super) fn token(&self) -> Option<GroupToken> {
        let held = self.held.as_ref()?;
        held.text.as_ref().map(|text| GroupToken {
            access_token: text.clone(),
            issued_at: held.issued_at,
            expires_at: held.expires_at,
            serial: held.serial,
            requested: held.requested,
            token_api: held.token_api,
        })
    }

    /// The generation that issued the group's token, whether or not its
    /// text is kept.
    pub(super) fn token_api(&self) -> Option<TokenApi> {
        self.held.as_ref().and_then(|held| held.token_api)
    }

    /// The serial of the group's token, whether or not its text is kept; 0
    /// for none.
    pub(super) fn serial(&self) -> u64 {
        self.held.as_ref().map_or(0, |held| held.serial)
    }

    /// The Secret that holds the group's token, when its text is not kept.
    pub(super) fn held_by(&self) -> Option<TokenHolder> {
        match &self.held {
            Some(held) if held.text.is_none() => self.holder.clone(),
            _ => None,
        }
    }

    /// When the group's token expires, if it is still valid at `now`.
    pub(super) fn valid_until(&self, now: Timestamp) -> Option<Timestamp> {
        self.held
            .as_ref()
            .and_then(|held| held.expires_at)
            .filter(|at| *at > now)
    }

    /// Takes a token found in a member's Secret: kept when the group has
    /// none or an older one (with the serial `next_serial` gives); the
    /// group's own token gets its text back.
    pub(super) fn offer(
        &mut self,
        access_token: &str,
        issued_at: Timestamp,
        expires_at: Option<Timestamp>,
        token_api: Option<TokenApi>,
        next_serial: impl FnOnce() -> u64,
    ) {
        let offered = fingerprint(access_token);
        match self.held.as_mut() {
            Some(held) if held.issued_at == issued_at && held.fingerprint == offered => {
                if held.text.is_none() {
                    held.text = Some(access_token.to_owned());
                }
            }
            Some(held) if held.issued_at >= issued_at => {}
            _ => {
                self.held = Some(Held {
                    text: Some(access_token.to_owned()),
                    fingerprint: offered,
                    issued_at,
                    expires_at,
                    serial: next_serial(),
                    requested: false,
                    token_api,
                });
                self.holder = None;
            }
        }
    }

    /// Takes the token a request of this group obtained, its text kept
    /// until a member's Secret holds it.
    pub(super) fn requested(&mut self, token: &GroupToken) {
        self.held = Some(Held {
            text: Some(token.access_token.clone()),
            fingerprint: fingerprint(&token.access_token),
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            serial: token.serial,
            requested: true,
            token_api: token.token_api,
        });
        self.holder = None;
    }

    /// Records that `holder` holds `access_token`: when that is the group's
    /// token, `holder` is where it is found; and when `sole` (the Secret is
    /// the only member's, and that member's one Secret), the text is no
    /// longer kept.
    pub(super) fn held_in(&mut self, access_token: &str, holder: TokenHolder, sole: bool) {
        if self
            .held
            .as_ref()
            .is_some_and(|held| held.fingerprint == fingerprint(access_token))
        {
            self.holder = Some(holder);
            if sole && let Some(held) = self.held.as_mut() {
                held.text = None;
            }
        }
    }
}
