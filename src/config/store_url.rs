//! The PostgreSQL store's connection string as people write it: which of libpq's two forms it takes — a URL
//! (`postgres://user:password@host:port/db?option=value`, also `postgresql://`) or key=value words
//! (`host=db user=tg password='hun ter2' dbname=tg`) — the key=value tokenizer (libpq's rules: quotes and
//! backslash escapes), and the redaction of the password in every spelling, parsed or not.
//!
//! Redaction is written to fail closed: whatever the text (a valid URL, key=value words, a typo such as
//! `postgres:/tg:hunter2@db/tg`, a password without a scheme `tg:hunter2@db`), a password there is replaced
//! by `***`: the user info before the last `@`; the value of every option but the known harmless ones
//! (`host`, `port`, `dbname`, `user`, `sslmode`, ...), so `password=`, `PASSWORD=`, `sslpassword=`,
//! `?pass%77ord=` and a misspelt `passwd=` alike, quoted values whole (unterminated ones to the end); in
//! text that is neither form, every stray word; and then every other place a password appears. Turning the text
//! into a connection is `tokens::store::pg_url`'s job.

/// A store URL (either form). It may carry a password: `Debug` and `Display` show it redacted, so that
/// the configuration can be logged; [`StoreUrl::expose`] gives the real text to the client library only.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    pub fn new(url: String) -> StoreUrl {
        StoreUrl(url)
    }

    /// The URL with its password, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with every password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({:?})", self.redacted())
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Which of libpq's two spellings a connection string uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `postgres://...` or `postgresql://...`.
    Url,
    /// `host=... dbname=...` words.
    KeyValue,
}

/// The keywords that make words a PostgreSQL connection string (at least one must be there), so that a
/// file name with a `=` in it is not taken for one.
const KEYWORDS: [&str; 8] = [
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "sslrootcert",
];

/// The form of `text`, or `None` when it is neither a PostgreSQL URL nor key=value words naming at least one
/// connection keyword (`host`, `dbname`, `user`, ...).
pub fn form(text: &str) -> Option<Form> {
    let text = text.trim();
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        return Some(Form::Url);
    }
    match conninfo_pairs(text) {
        Ok(pairs) if pairs.iter().any(|(k, _)| KEYWORDS.contains(&k.as_str())) => {
            Some(Form::KeyValue)
        }
        _ => None,
    }
}

/// The `key=value` words of a libpq connection string, in order: whitespace around `=` allowed, values
/// in single quotes may hold spaces, a backslash takes the next character as it is. The problem, on
/// failure, never quotes the text (it may be a password): it says where.
pub fn conninfo_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let b: Vec<char> = text.chars().collect();
    let (mut i, mut pairs) = (0, Vec::new());
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i == b.len() {
            return Ok(pairs);
        }
        let start = i;
        while i < b.len() && !b[i].is_whitespace() && b[i] != '=' {
            i += 1;
        }
        let key: String = b[start..i].iter().collect();
        let word = pairs.len() + 1;
        skip_ws(&mut i);
        if key.is_empty() || b.get(i) != Some(&'=') {
            return Err(format!("word {word} is not key=value"));
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = String::new();
        if b.get(i) == Some(&'\'') {
            i += 1;
            loop {
                match b.get(i) {
                    None => {
                        return Err(format!(
                            "the quoted value of word {word} ({key}) has no closing quote"
                        ))
                    }
                    Some('\'') => break,
                    Some('\\') => {
                        value.extend(b.get(i + 1));
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            i += 1;
        } else {
            while i < b.len() && !b[i].is_whitespace() {
                if b[i] == '\\' {
                    value.extend(b.get(i + 1));
                    i += 2;
                } else {
                    value.push(b[i]);
                    i += 1;
                }
            }
            if value.is_empty() {
                return Err(format!("word {word} ({key}) has no value"));
            }
        }
        pairs.push((key, value));
    }
}

/// The options whose values are shown: what libpq and tokio-postgres know that is not a secret. Any
/// other option's value (`password`, a misspelt `passwd`, an unknown key) is shown as `***`.
const SHOWN_KEYS: [&str; 21] = [
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// Whether an option's name (as written: any case, percent-encoded) says it holds a password, so that
/// its value is hidden wherever else it appears too (`password`, `PASSWORD`, `sslpassword`, `passwd`).
fn is_secret_key(key: &str) -> bool {
    let key = percent_decode(key).to_ascii_lowercase();
    ["pass", "pwd", "secret"].iter().any(|s| key.contains(s))
}

/// Whether `key` could be an option's name at all (`postgres://tg:a` before a `=` in a password is not).
fn is_key(key: &[char]) -> bool {
    !key.is_empty()
        && key
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '%'))
}

/// `text` with every password replaced by `***` (see the module documentation for the spellings).
pub fn redact_url(text: &str) -> String {
    redact_with_secrets(text).0
}

/// `message` (a client library's error, say) with every password `url` holds replaced by `***`: the
/// password as written, unquoted and percent-decoded.
pub fn hide_secrets_of(url: &str, message: &str) -> String {
    replace_all(message, &redact_with_secrets(url).1)
}

fn replace_all(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

/// The redacted text, and the secrets found (each as written, and decoded), longest first.
fn redact_with_secrets(text: &str) -> (String, Vec<String>) {
    let mut secrets = Vec::new();
    let out = hide_options(text, &mut secrets);
    let out = match form(text) {
        Some(Form::KeyValue) => out,
        Some(Form::Url) => hide_user_info(&out, &mut secrets),
        None => hide_stray_words(&hide_user_info(&out, &mut secrets)),
    };
    let mut all = Vec::new();
    for s in secrets {
        all.push(percent_decode(&s));
        all.push(unescape(&s));
        all.push(s);
    }
    all.retain(|s| !s.is_empty() && s != "***");
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    all.dedup();
    (replace_all(&out, &all), all)
}

/// Whether `text` is written like a URL: a scheme, a colon and a slash (`postgres://`, `postgres:/`).
fn scheme_len(text: &str) -> Option<usize> {
    let colon = text.find(':')?;
    let scheme = &text[..colon];
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
    (is_scheme && text[colon + 1..].starts_with('/')).then(|| {
        colon + 1 + text[colon + 1..].len() - text[colon + 1..].trim_start_matches('/').len()
    })
}

/// Replaces the value of every option but the [`SHOWN_KEYS`]: `name = value` words (quoted, escaped) and
/// `?name=value&` URL parameters alike. Values of password options are also collected as secrets.
fn hide_options(text: &str, secrets: &mut Vec<String>) -> String {
    let url_like = scheme_len(text).is_some();
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        let starts_word = i == 0 || c[i - 1].is_whitespace() || matches!(c[i - 1], '?' | '&');
        let mut k = i;
        while starts_word
            && k < c.len()
            && !c[k].is_whitespace()
            && !matches!(c[k], '=' | '&' | '?')
        {
            k += 1;
        }
        let mut eq = k;
        while eq < c.len() && c[eq].is_whitespace() {
            eq += 1;
        }
        let key: String = c[i..k].iter().collect();
        let shown = SHOWN_KEYS.contains(&percent_decode(&key).as_str());
        if !starts_word || !is_key(&c[i..k]) || c.get(eq) != Some(&'=') || shown {
            out.push(c[i]);
            i += 1;
            continue;
        }
        let mut v = eq + 1;
        while v < c.len() && c[v].is_whitespace() && !url_like {
            v += 1;
        }
        let end = value_end(&c, v, url_like);
        out.extend(&c[i..v]);
        out.push_str("***");
        if is_secret_key(&key) {
            let value: String = c[v..end].iter().collect();
            secrets.push(value.trim_matches('\'').to_string());
            secrets.push(value);
        }
        i = end;
    }
    out
}

/// In text that is neither form, every word that is neither `key=value`, nor holds an `@` or a `:/`
/// (a URL's pieces, already redacted) is hidden: a stray word may be a password typed in the wrong place.
fn hide_stray_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if !word.is_empty() {
            let kept = word.contains(['=', '@']) || word.contains(":/");
            out.push_str(if kept { word.as_str() } else { "***" });
            word.clear();
        }
    };
    for c in text.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Where the value starting at `v` ends: after its closing quote (or at the end when there is none);
/// in a URL at the `&` that starts the next `name=` parameter; else at unescaped whitespace.
fn value_end(c: &[char], v: usize, url_like: bool) -> usize {
    let mut e = v;
    if c.get(v) == Some(&'\'') {
        e += 1;
        while e < c.len() && c[e] != '\'' {
            e += if c[e] == '\\' { 2 } else { 1 };
        }
        return (e + 1).min(c.len());
    }
    while e < c.len() {
        if url_like && c[e] == '&' {
            let name = c[e + 1..]
                .iter()
                .take_while(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '%' | '-'))
                .count();
            if name > 0 && c.get(e + 1 + name) == Some(&'=') {
                break;
            }
        } else if !url_like && c[e].is_whitespace() {
            break;
        }
        e += if c[e] == '\\' && !url_like { 2 } else { 1 };
    }
    e.min(c.len())
}

/// Replaces the password of `user:password@` before the last `@`. In a well-formed `postgres://` URL
/// without `:` in its user info that part is a user name and stays; anywhere else (a typo, no scheme) the
/// whole user info is taken for a secret.
fn hide_user_info(text: &str, secrets: &mut Vec<String>) -> String {
    let prefix = scheme_len(text).unwrap_or(0);
    let rest = &text[prefix..];
    let Some(at) = rest.rfind('@') else {
        return text.to_string();
    };
    let info = &rest[..at];
    let proper = text.starts_with("postgres://") || text.starts_with("postgresql://");
    match info.split_once(':') {
        Some((user, password)) => {
            secrets.push(password.to_string());
            format!("{}{user}:***{}", &text[..prefix], &rest[at..])
        }
        None if proper || info.is_empty() => text.to_string(),
        None => {
            secrets.push(info.to_string());
            format!("{}***{}", &text[..prefix], &rest[at..])
        }
    }
}

/// `%XX` escapes decoded (invalid ones kept as they are; invalid UTF-8 replaced).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(b.len()), 0);
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A key=value value's backslash escapes and quotes removed.
fn unescape(s: &str) -> String {
    let s = s.strip_prefix('\'').unwrap_or(s);
    let s = s.strip_suffix('\'').unwrap_or(s);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (as written, as shown, the password): the password must not appear in what is shown.
    const SPELLINGS: &[(&str, &str, &str)] = &[
        (
            "postgres://tg:hunter2@db:5432/tok",
            "postgres://tg:***@db:5432/tok",
            "hunter2",
        ),
        (
            "postgresql://tg:p%40ss@db/tok?sslmode=require",
            "postgresql://tg:***@db/tok?sslmode=require",
            "p%40ss",
        ),
        (
            "postgres://tg:pa/ss@word@db/tok",
            "postgres://tg:***@db/tok",
            "pa/ss@word",
        ),
        (
            "postgres://tg@db/tok?password=hunter2&x=1",
            "postgres://tg@db/tok?password=***&x=***",
            "hunter2",
        ),
        (
            "postgres://tg@db/tok?passwd=hunter2&sslmode=require",
            "postgres://tg@db/tok?passwd=***&sslmode=require",
            "hunter2",
        ),
        (
            "postgres://tg:a=hunter2@db/tok",
            "postgres://tg:***@db/tok",
            "a=hunter2",
        ),
        (
            "postgres://tg@db/tok?port=1&PASSWORD=hunter2",
            "postgres://tg@db/tok?port=1&PASSWORD=***",
            "hunter2",
        ),
        (
            "postgres://tg@db/tok?pass%77ord=hunter2",
            "postgres://tg@db/tok?pass%77ord=***",
            "hunter2",
        ),
        (
            "postgres://tg@db/tok?password=hun&ter2",
            "postgres://tg@db/tok?password=***",
            "hun&ter2",
        ),
        (
            "postgres://tg@db/tok?password=hun ter2&sslmode=require",
            "postgres://tg@db/tok?password=***&sslmode=require",
            "hun ter2",
        ),
        (
            "postgres://tg:pa?ss@db/tok?sslmode=require",
            "postgres://tg:***@db/tok?sslmode=require",
            "pa?ss",
        ),
        (
            "postgres://tg:hunter2@db/tok?x=hunter2",
            "postgres://tg:***@db/tok?x=***",
            "hunter2",
        ),
        (
            "postgres://tg:hunter2@db/tok?sslpassword=k3y",
            "postgres://tg:***@db/tok?sslpassword=***",
            "k3y",
        ),
        ("postgres://db/tok", "postgres://db/tok", ""),
        ("postgres://tg@db/tok", "postgres://tg@db/tok", ""),
        // Typos and other schemes.
        (
            "postgres:/tg:hunter2@db/tg",
            "postgres:/tg:***@db/tg",
            "hunter2",
        ),
        ("postgres:/hunter2@db/tg", "postgres:/***@db/tg", "hunter2"),
        (
            "postgres//tg:hunter2@db/tg",
            "postgres//tg:***@db/tg",
            "hunter2",
        ),
        (
            "POSTGRES://tg:hunter2@db/tg",
            "POSTGRES://tg:***@db/tg",
            "hunter2",
        ),
        (
            "mysql://tg:hunter2@db/tg",
            "mysql://tg:***@db/tg",
            "hunter2",
        ),
        ("tg:hunter2@db/tg", "tg:***@db/tg", "hunter2"),
        ("hunter2@db", "***@db", "hunter2"),
        // key=value words.
        (
            "host=db user=tg password=hunter2 dbname=tg",
            "host=db user=tg password=*** dbname=tg",
            "hunter2",
        ),
        (
            "host=db password='hun ter2' dbname=tg",
            "host=db password=*** dbname=tg",
            "hun ter2",
        ),
        (
            "host=db password = 'hun\\' ter2' dbname=tg",
            "host=db password = *** dbname=tg",
            "hun\\' ter2",
        ),
        (
            "host=db password=hun\\ ter2 dbname=tg",
            "host=db password=*** dbname=tg",
            "hun\\ ter2",
        ),
        (
            "host=db password=a&b@c user=tg@corp",
            "host=db password=*** user=tg@corp",
            "a&b@c",
        ),
        (
            "host=db PASSWORD=hunter2",
            "host=db PASSWORD=***",
            "hunter2",
        ),
        (
            "host=db Password=hunter2",
            "host=db Password=***",
            "hunter2",
        ),
        (
            "host=db\tpassword=hunter2\nuser=tg",
            "host=db\tpassword=***\nuser=tg",
            "hunter2",
        ),
        // Broken key=value words: an unterminated quote hides the rest.
        (
            "host=db password='hun ter2 dbname=tg",
            "host=db password=***",
            "hun ter2 dbname=tg",
        ),
        ("host=db password=", "host=db password=***", ""),
        (
            "host=db user=tg:hunter2@x password",
            "host=db user=tg:***@x ***",
            "hunter2",
        ),
        (
            "host=db port=5432 hunter2",
            "host=db port=5432 ***",
            "hunter2",
        ),
        ("host=db passwd=hunter2", "host=db passwd=***", "hunter2"),
        ("hunter2", "***", "hunter2"),
        ("db.internal:5432/hun:ter2", "***", "hun:ter2"),
    ];

    #[test]
    fn every_spelling_is_redacted() {
        for (text, shown, secret) in SPELLINGS {
            let out = redact_url(text);
            assert_eq!(&out, shown, "{text}");
            if !secret.is_empty() {
                assert!(!out.contains(secret), "{text} → {out}");
                for piece in ["hunter2", "hun ter2", "hun&ter2", "p@ss"] {
                    assert!(!out.contains(piece), "{text} → {out}");
                }
            }
        }
    }

    #[test]
    fn messages_lose_the_secrets_of_their_url() {
        let url = "postgres://tg:p%40ss@db/tok";
        assert_eq!(
            hide_secrets_of(url, "password p@ss or p%40ss refused"),
            "password *** or *** refused"
        );
        let url = "host=db password='hun\\'ter2'";
        assert_eq!(hide_secrets_of(url, "bad hun'ter2"), "bad ***");
    }

    #[test]
    fn forms() {
        assert_eq!(form("postgres://db/x"), Some(Form::Url));
        assert_eq!(form(" postgresql://db/x "), Some(Form::Url));
        assert_eq!(form("host=db dbname=tg"), Some(Form::KeyValue));
        assert_eq!(form("dbname = 'my db'"), Some(Form::KeyValue));
        for none in [
            "postgres:/tg:pw@db/tg",
            "mysql://u:p@h/db",
            "data/tokengate.db",
            "a=b",
            "host=db password='open",
            "",
        ] {
            assert_eq!(form(none), None, "{none}");
        }
    }

    #[test]
    fn conninfo_words() {
        assert_eq!(
            conninfo_pairs("host = db  password='a b\\'c' user=x\\ y").unwrap(),
            vec![
                ("host".to_string(), "db".to_string()),
                ("password".to_string(), "a b'c".to_string()),
                ("user".to_string(), "x y".to_string())
            ]
        );
        assert_eq!(
            conninfo_pairs("password=''").unwrap(),
            vec![("password".into(), String::new())]
        );
        for (bad, problem) in [
            ("host=db hunter2", "word 2 is not key=value"),
            (
                "host=db password='hunter2",
                "word 2 (password) has no closing quote",
            ),
            ("host=", "word 1 (host) has no value"),
        ] {
            let e = conninfo_pairs(bad).unwrap_err();
            assert!(e.contains(problem) && !e.contains("hunter2"), "{bad}: {e}");
        }
    }
}
