//! `bluecam room …` (through the HTTP API) and `bluecam token` (offline, with the secret).

use anyhow::{Context as _, bail};
use bluecam_server::{Claims, Secret};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Where the API is and how to authenticate.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Server URL.
    #[arg(
        long,
        env = "BLUECAM_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    server: String,
    #[command(flatten)]
    secret: SecretArgs,
}

/// The API secret: `--secret`, `BLUECAM_API_SECRET`, or the file a local server generated.
#[derive(Debug, Args)]
pub struct SecretArgs {
    #[arg(
        long,
        env = "BLUECAM_API_SECRET",
        hide_env_values = true,
        global = true
    )]
    secret: Option<String>,
    /// Data dir of a local server, to read its generated secret from.
    #[arg(
        long,
        env = "BLUECAM_DATA_DIR",
        default_value = "bluecam-data",
        global = true
    )]
    data_dir: PathBuf,
}

impl SecretArgs {
    fn resolve(&self) -> anyhow::Result<String> {
        if let Some(s) = &self.secret {
            return Ok(s.clone());
        }
        let path = self.data_dir.join("api-secret");
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_owned())
            .with_context(|| {
                format!(
                    "no API secret: pass --secret, set BLUECAM_API_SECRET, or run where {} exists",
                    path.display()
                )
            })
    }
}

#[derive(Debug, Args)]
pub struct RoomArgs {
    #[command(subcommand)]
    command: RoomCommand,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Subcommand)]
enum RoomCommand {
    /// Create a room; prints it as JSON.
    Create {
        /// Room id (default: an unguessable one).
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        settings: RoomSettings,
        /// Let one identity hold several seats at once (several tabs or devices); by default a
        /// new join of an identity replaces its older session.
        #[arg(long)]
        multiple_sessions: bool,
    },
    /// List rooms (optionally those an identity owns or is a member of, or owns), every page.
    List {
        /// Rooms this identity owns or is a member of.
        #[arg(long)]
        member: Option<String>,
        /// Rooms this identity owns.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Show one room.
    Get { id: String },
    /// Delete a room; peers inside get `room_closed`.
    Delete { id: String },
    /// Change a room (`PATCH`): only the settings given change; prints the room.
    Update {
        id: String,
        #[command(flatten)]
        settings: RoomSettings,
        /// No member list any more: any token of the room may join.
        #[arg(long, conflicts_with = "members")]
        no_members: bool,
    },
    /// List the peers in a room (every page).
    Peers { id: String },
    /// Remove a peer from a room: it leaves with reason `kicked`, and the tokens of its
    /// identity for this room issued until now stop working.
    Kick {
        id: String,
        /// The peer's id (`bluecam room peers` lists them; one that starts with `-` is taken
        /// as the id, not as an option).
        #[arg(allow_hyphen_values = true)]
        peer: String,
    },
    /// Send a message from the backend into a room (every peer, or those given): the SDK's
    /// `onMessage` gets it with `from.server`; prints whom it reached.
    Send {
        id: String,
        /// The message's type.
        #[arg(long = "type")]
        msg_type: String,
        /// Its data, JSON (default null).
        #[arg(long)]
        data: Option<String>,
        /// A peer to send it to (repeatable; default every peer).
        #[arg(long = "to")]
        to: Vec<String>,
    },
}

/// The settings of a room that `room create` sets and `room update` changes.
#[derive(Debug, Args)]
struct RoomSettings {
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// Identities allowed besides the owner (repeatable; `update`: the new list); without any,
    /// any token of the room may join.
    #[arg(long = "member")]
    members: Vec<String>,
    #[arg(long)]
    max_peers: Option<u32>,
    #[arg(long)]
    empty_timeout_secs: Option<u64>,
    /// JSON value stored with the room.
    #[arg(long)]
    metadata: Option<String>,
}

impl RoomSettings {
    /// The request body's fields for the settings given (those not given are left out).
    fn body(self) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        let mut body = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            if !v.is_null() {
                body.insert(k.to_owned(), v);
            }
        };
        put("name", self.name.into());
        put("description", self.description.into());
        if !self.members.is_empty() {
            put("members", self.members.into());
        }
        put("maxPeers", self.max_peers.into());
        put("emptyTimeoutSecs", self.empty_timeout_secs.into());
        if let Some(m) = self.metadata {
            let m: serde_json::Value =
                serde_json::from_str(&m).context("--metadata must be JSON")?;
            put("metadata", m);
        }
        Ok(body)
    }
}

/// `bluecam calls ROOM_ID`.
#[derive(Debug, Args)]
pub struct CallsArgs {
    /// The room whose calls to list (newest first, every page).
    room: String,
    #[command(flatten)]
    api: ApiArgs,
}

/// `bluecam usage --from --to`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Start of the interval, Unix seconds (included).
    #[arg(long)]
    from: u64,
    /// End of the interval, Unix seconds (excluded) [default: now].
    #[arg(long)]
    to: Option<u64>,
    /// Only rooms this identity owned.
    #[arg(long, conflicts_with = "member")]
    owner: Option<String>,
    /// Only rooms this identity owned or was a member of.
    #[arg(long)]
    member: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

/// Prints a room's calls, every page as one list.
pub async fn calls(args: CallsArgs) -> anyhow::Result<()> {
    let secret = args.api.secret.resolve()?;
    let base = args.api.server.trim_end_matches('/').to_owned();
    let url = format!("{base}/v1/rooms/{}/calls", args.room);
    let http = reqwest::Client::new();
    let calls = every_page(&http, &url, &[], "calls", &secret, &base).await?;
    print_line(&serde_json::to_string_pretty(
        &serde_json::json!({ "calls": calls }),
    )?);
    Ok(())
}

/// Prints the usage report of an interval.
pub async fn usage(args: UsageArgs) -> anyhow::Result<()> {
    let secret = args.api.secret.resolve()?;
    let base = args.api.server.trim_end_matches('/').to_owned();
    let to = match args.to {
        Some(t) => t,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    };
    let mut query: Vec<(&str, String)> =
        vec![("from", args.from.to_string()), ("to", to.to_string())];
    query.extend(args.owner.map(|o| ("owner", o)));
    query.extend(args.member.map(|m| ("member", m)));
    let req = reqwest::Client::new()
        .get(format!("{base}/v1/usage"))
        .query(&query);
    let value: serde_json::Value =
        serde_json::from_str(&call(req, &secret, &base).await?).context("invalid JSON answer")?;
    print_line(&serde_json::to_string_pretty(&value)?);
    Ok(())
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[arg(long, required_unless_present = "print_key")]
    room: Option<String>,
    #[arg(long, required_unless_present = "print_key")]
    identity: Option<String>,
    /// Print the token signing key derived from the API secret instead of a token: give it
    /// to a backend that mints tokens offline with a JWT library (HS256, the key's text as the
    /// secret); it cannot call the API.
    #[arg(long, conflicts_with_all = ["room", "identity", "name"])]
    print_key: bool,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Display name carried in the token.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    secret: SecretArgs,
}

pub async fn room(args: RoomArgs) -> anyhow::Result<()> {
    let secret = args.api.secret.resolve()?;
    let base = args.api.server.trim_end_matches('/').to_owned();
    let http = reqwest::Client::new();
    let request = match args.command {
        RoomCommand::Create {
            id,
            owner,
            settings,
            multiple_sessions,
        } => {
            let mut body = settings.body()?;
            if let Some(id) = id {
                body.insert("id".into(), id.into());
            }
            if let Some(owner) = owner {
                body.insert("owner".into(), owner.into());
            }
            if multiple_sessions {
                body.insert("multipleSessions".into(), true.into());
            }
            http.post(format!("{base}/v1/rooms")).json(&body)
        }
        RoomCommand::List { member, owner } => {
            let mut filters: Vec<(&str, String)> = Vec::new();
            filters.extend(member.map(|m| ("member", m)));
            filters.extend(owner.map(|o| ("owner", o)));
            let url = format!("{base}/v1/rooms");
            let rooms = every_page(&http, &url, &filters, "rooms", &secret, &base).await?;
            let all = serde_json::json!({ "rooms": rooms });
            print_line(&serde_json::to_string_pretty(&all)?);
            return Ok(());
        }
        RoomCommand::Peers { id } => {
            let url = format!("{base}/v1/rooms/{id}/peers");
            let peers = every_page(&http, &url, &[], "peers", &secret, &base).await?;
            let all = serde_json::json!({ "peers": peers });
            print_line(&serde_json::to_string_pretty(&all)?);
            return Ok(());
        }
        RoomCommand::Kick { id, peer } => http.delete(format!("{base}/v1/rooms/{id}/peers/{peer}")),
        RoomCommand::Send {
            id,
            msg_type,
            data,
            to,
        } => {
            let data: serde_json::Value = match data {
                Some(text) => serde_json::from_str(&text).context("--data is not JSON")?,
                None => serde_json::Value::Null,
            };
            let mut body = serde_json::json!({ "type": msg_type, "data": data });
            if !to.is_empty() {
                body["to"] = to.into();
            }
            http.post(format!("{base}/v1/rooms/{id}/messages"))
                .json(&body)
        }
        RoomCommand::Get { id } => http.get(format!("{base}/v1/rooms/{id}")),
        RoomCommand::Delete { id } => http.delete(format!("{base}/v1/rooms/{id}")),
        RoomCommand::Update {
            id,
            settings,
            no_members,
        } => {
            let mut body = settings.body()?;
            if no_members {
                body.insert("members".into(), serde_json::Value::Null);
            }
            http.patch(format!("{base}/v1/rooms/{id}")).json(&body)
        }
    };
    let text = call(request, &secret, &base).await?;
    if !text.is_empty() {
        let value: serde_json::Value =
            serde_json::from_str(&text).context("invalid JSON answer")?;
        print_line(&serde_json::to_string_pretty(&value)?);
    }
    Ok(())
}

/// Every page of a list (`limit`, `cursor`, `nextCursor`), its `key` items in one vector.
async fn every_page(
    http: &reqwest::Client,
    url: &str,
    filters: &[(&str, String)],
    key: &str,
    secret: &str,
    base: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query: Vec<(&str, String)> = vec![("limit", "1000".into())];
        query.extend(filters.iter().cloned());
        query.extend(cursor.take().map(|c| ("cursor", c)));
        let page: serde_json::Value =
            serde_json::from_str(&call(http.get(url).query(&query), secret, base).await?)
                .context("invalid JSON answer")?;
        items.extend(page[key].as_array().cloned().unwrap_or_default());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(items),
        }
    }
}

/// Sends one API request; its body, or an error with the API's message and code.
async fn call(
    request: reqwest::RequestBuilder,
    secret: &str,
    base: &str,
) -> anyhow::Result<String> {
    let response = request
        .bearer_auth(secret)
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                let e = v.get("error")?;
                Some(format!(
                    "{} ({})",
                    e.get("message")?.as_str()?,
                    e.get("code")?.as_str()?
                ))
            })
            .unwrap_or(text);
        bail!("{status}: {message}");
    }
    Ok(text)
}

pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    let secret = Secret::new(args.secret.resolve()?);
    let (Some(room), Some(identity)) = (args.room, args.identity) else {
        print_line(secret.token_key());
        return Ok(());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = Claims {
        sub: identity.as_str().into(),
        room: room.as_str().into(),
        exp: now + args.ttl,
        iat: now,
        nbf: None,
        name: args.name,
        metadata: None,
        permissions: None,
    };
    print_line(&secret.mint(&claims)?);
    Ok(())
}

#[allow(clippy::print_stdout)] // the CLI's output
fn print_line(text: &str) {
    println!("{text}");
}
