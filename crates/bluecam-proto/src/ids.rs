//! Newtype ids. Each wraps an `Arc<str>` so that cloning an id into a frame or a map is cheap.

use serde::{Deserialize, Serialize};
use std::{fmt, sync::Arc};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Eq, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String))]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a string as this id.
            pub fn new(s: impl Into<Arc<str>>) -> Self {
                Self(s.into())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq for $name {
            /// The same text; clones of one id (most comparisons on the message path) are
            /// told equal without reading it.
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }

        impl std::hash::Hash for $name {
            /// The text's hash, as equality compares the text.
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state);
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }
    };
}

id_type!(
    /// A room, as created through the HTTP API.
    RoomId
);
id_type!(
    /// One participant of one room; stable across WebSocket resumes.
    PeerId
);
id_type!(
    /// A resumable WebSocket session (one per peer).
    SessionId
);
id_type!(
    /// The app's name for a user (`sub` of the token); not unique within a room.
    Identity
);
id_type!(
    /// A server node of a cluster.
    NodeId
);

/// The secret that proves ownership of a [`SessionId`] on resume. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionSecret(Arc<str>);

impl SessionSecret {
    /// Wraps a secret.
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        Self(s.into())
    }

    /// The secret as text (to put in a frame).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the two secrets first differ.
    pub fn matches(&self, other: &SessionSecret) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}
