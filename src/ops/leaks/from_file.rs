//! `tokengate token leaked --from-file F`: an operator's report of leaked tokens (found in logs, a
//! support ticket, another scanner), the same JSON array GitHub sends, taken exactly as the endpoint
//! takes a signed report ([`super::take`]) with the reporter `cli` (events `revoked` by `leak:cli`). The
//! command loads the token index from the store to look the tokens up by digest, as a gateway does.

use super::take::{Match, Taker};
use super::{Feedback, LeakMetrics, MAX_BODY, MAX_MATCHES};
use crate::config::leaks::LeakAction;
use crate::config::Config;
use crate::tokens::index::Index;
use crate::tokens::store::Location;
use std::path::Path;
use std::sync::Arc;

/// Takes the report in `file` (`-`: stdin) against the store `config` names; returns the feedback.
pub fn take_file(config: &Config, file: &Path) -> anyhow::Result<Vec<Feedback>> {
    let bytes = if file == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::io::stdin(), MAX_BODY + 1),
            &mut b,
        )?;
        b
    } else {
        std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
    };
    if bytes.len() as u64 > MAX_BODY {
        anyhow::bail!("{}: larger than 1 MiB; split the report", file.display());
    }
    // The parse error is not shown: it could quote a token.
    let matches: Vec<Match> = serde_json::from_slice(&bytes).map_err(|_| {
        anyhow::anyhow!(
            "{}: not a JSON array of {{\"token\", \"type\", \"url\", \"source\"}}",
            file.display()
        )
    })?;
    if matches.len() > MAX_MATCHES {
        anyhow::bail!(
            "{}: more than {MAX_MATCHES} matches; split the report",
            file.display()
        );
    }
    let location = Location::from_config(&config.store)?;
    let index = Arc::new(Index::new());
    index.load_from(&location)?;
    let leaks = config.leaks.as_ref();
    let taker = Taker::new(
        leaks.map_or(LeakAction::Revoke, |l| l.action),
        leaks.is_some_and(|l| l.notify_url.is_some()),
        LeakMetrics::new(&prometheus::Registry::new()),
        index,
        location,
    );
    Ok(taker.take("cli", &matches)?)
}
