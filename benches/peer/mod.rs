//! What the benchmark's peers (`peer-tokio`, `peer-epoll`) share: their
//! command line, the token check and the JSON they send, in jwtchat's
//! shapes, so the load generator cannot tell them from jwtchat.
#![allow(dead_code)]

use std::net::SocketAddr;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

#[path = "../loadgen/mod.rs"]
mod loadgen;

/// `--bind HOST:PORT --secret-file FILE`, the secret read as jwtchat reads it.
pub fn parse_args(usage: &str) -> Result<(SocketAddr, DecodingKey), String> {
    let (mut bind, mut secret) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value\n{usage}"))?;
        match flag.as_str() {
            "--bind" => bind = Some(value.parse().map_err(|e| format!("--bind: {e}"))?),
            "--secret-file" => {
                secret = Some(loadgen::read_secret(&value).map_err(|e| format!("{value}: {e}"))?)
            }
            other => return Err(format!("unknown flag {other}\n{usage}")),
        }
    }
    let bind = bind.ok_or(format!("--bind is required\n{usage}"))?;
    let secret = secret.ok_or(format!("--secret-file is required\n{usage}"))?;
    let key = DecodingKey::from_secret(&secret).map_err(|e| e.to_string())?;
    Ok((bind, key))
}

#[derive(Deserialize)]
struct Claims {
    username: String,
}

/// The `username` of a valid token in a request's query string
/// (`token=...`; HS256, `exp` checked with zero leeway, as jwtchat does).
pub fn token_user(query: &str, key: &DecodingKey) -> Option<String> {
    let token = url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "token")?
        .1;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Claims>(token.as_bytes(), key, &validation).ok()?;
    Some(data.claims.username)
}

/// What a peer sends, in jwtchat's shapes (fields in its order: `type`
/// first, which the load generator relies on).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Outgoing<'a> {
    Welcome {
        user: &'a str,
    },
    Message {
        seq: u64,
        from: &'a str,
        text: &'a str,
        ts: u64,
    },
}

impl Outgoing<'_> {
    /// A chat message as jwtchat would send it, stamped now.
    pub fn message(seq: u64, from: &str, text: &str) -> String {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Outgoing::Message {
            seq,
            from,
            text,
            ts,
        }
        .json()
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The text of a client's `{"type":"message","text":...}`, if that is what
/// it is.
pub fn chat_text(json: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Incoming {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        text: String,
    }
    let incoming: Incoming = serde_json::from_slice(json).ok()?;
    (incoming.kind == "message").then_some(incoming.text)
}
