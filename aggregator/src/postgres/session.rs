//! What Postgres clients send besides queries, answered without the engine:
//! transaction control (no-ops: altdb's statements are reads), `SET`, `SHOW`,
//! `RESET`, `DISCARD`, `DEALLOCATE`, and statements that are only comments
//! (Grafana's health check sends `-- ping`). Also the splitting of a simple
//! query's text into its statements.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Settings a session has `SET`, with Postgres's defaults for the ones clients
/// ask for.
#[derive(Debug, Default)]
pub struct Settings(Mutex<BTreeMap<String, String>>);

/// Defaults `SHOW` and `current_setting()` answer with.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("default_transaction_isolation", "read committed"),
    ("default_transaction_read_only", "on"),
    ("extra_float_digits", "1"),
    ("integer_datetimes", "on"),
    ("intervalstyle", "postgres"),
    ("is_superuser", "off"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
    ("max_identifier_length", "63"),
    ("search_path", "public"),
    ("server_encoding", "UTF8"),
    ("server_version", SERVER_VERSION),
    ("server_version_num", "160006"),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("timezone", "UTC"),
    ("transaction_isolation", "read committed"),
    ("transaction_read_only", "on"),
];

/// The Postgres version altdb's door speaks like (clients check it).
pub const SERVER_VERSION: &str = "16.6";

impl Settings {
    pub fn set(&self, name: &str, value: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_ascii_lowercase(), value.to_string());
    }

    pub fn reset(&self, name: &str) {
        let mut settings = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if name.eq_ignore_ascii_case("all") {
            settings.clear();
        } else {
            settings.remove(&name.to_ascii_lowercase());
        }
    }

    /// A setting's value: the session's, else the default, else none.
    pub fn get(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        if let Some(value) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&name) {
            return Some(value.clone());
        }
        setting_default(&name).map(str::to_string)
    }
}

pub fn setting_default(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    DEFAULTS
        .iter()
        .find(|(key, _)| *key == name)
        .map(|(_, value)| *value)
}

/// A statement answered without the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Nothing but comments and white space.
    Empty,
    Begin,
    Commit,
    Rollback,
    /// `SET [SESSION|LOCAL] name {=|TO} value`.
    Set {
        name: String,
        value: String,
    },
    /// `SHOW name`.
    Show(String),
    /// `RESET name`, `RESET ALL`.
    Reset(String),
    /// `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`, `DISCARD ..`, `DEALLOCATE ..`,
    /// `CLOSE ..`, `UNLISTEN ..`: answered with their tag and nothing done
    /// (altdb keeps no such session state; every statement is a read).
    Tag(&'static str),
}

/// The command `sql` is, if it is one.
pub fn command(sql: &str) -> Option<Command> {
    let text = strip_comments(sql);
    let text = text.trim().trim_end_matches(';').trim();
    if text.is_empty() {
        return Some(Command::Empty);
    }
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let original: Vec<&str> = text.split_whitespace().collect();
    match words[0] {
        "begin" | "start" => Some(Command::Begin),
        "commit" | "end" => Some(Command::Commit),
        // `ROLLBACK TO [SAVEPOINT] x` stays in the transaction.
        "rollback" if words.get(1) == Some(&"to") => Some(Command::Tag("ROLLBACK")),
        "rollback" | "abort" => Some(Command::Rollback),
        "savepoint" => Some(Command::Tag("SAVEPOINT")),
        "release" => Some(Command::Tag("RELEASE")),
        "set" => {
            let mut rest = &original[1..];
            if let Some(first) = rest.first() {
                if first.eq_ignore_ascii_case("session") || first.eq_ignore_ascii_case("local") {
                    rest = &rest[1..];
                }
            }
            let joined = rest.join(" ");
            // `SET name = value`, `SET name TO value`, `SET TIME ZONE value`.
            let (name, value) = if let Some((name, value)) = joined.split_once('=') {
                (name.trim().to_string(), value.trim().to_string())
            } else if rest.len() >= 3
                && rest[0].eq_ignore_ascii_case("time")
                && rest[1].eq_ignore_ascii_case("zone")
            {
                ("timezone".to_string(), rest[2..].join(" "))
            } else if rest.len() >= 3 && rest[1].eq_ignore_ascii_case("to") {
                (rest[0].to_string(), rest[2..].join(" "))
            } else if let Some(name) = rest.first() {
                // `SET TRANSACTION ..`, `SET SESSION CHARACTERISTICS ..`.
                (name.to_string(), rest[1..].join(" "))
            } else {
                return None;
            };
            Some(Command::Set {
                name: name.trim_matches('"').to_ascii_lowercase(),
                value: value.trim_matches('\'').to_string(),
            })
        }
        "show" if words.len() >= 2 => {
            let name = if words[1] == "time" && words.get(2) == Some(&"zone") {
                "timezone".to_string()
            } else if words[1] == "transaction" && words.get(2) == Some(&"isolation") {
                "transaction_isolation".to_string()
            } else {
                words[1].trim_matches('"').to_string()
            };
            Some(Command::Show(name))
        }
        "reset" if words.len() >= 2 => Some(Command::Reset(words[1].to_string())),
        "discard" => Some(Command::Tag("DISCARD ALL")),
        "deallocate" => Some(Command::Tag("DEALLOCATE")),
        "close" => Some(Command::Tag("CLOSE CURSOR")),
        "unlisten" => Some(Command::Tag("UNLISTEN")),
        _ => None,
    }
}

/// `sql` without its `--` and `/* */` comments (string literals and quoted
/// names kept as they are).
pub fn strip_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = ' ';
                for d in chars.by_ref() {
                    if previous == '*' && d == '/' {
                        break;
                    }
                    previous = d;
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The statements of a simple query, split at top-level semicolons (not in
/// string literals, quoted names, dollar quotes or comments).
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                current.push(c);
                for d in chars.by_ref() {
                    current.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '$' if chars.peek() == Some(&'$') => {
                current.push(c);
                current.push(chars.next().expect("peeked"));
                let mut previous = ' ';
                for d in chars.by_ref() {
                    current.push(d);
                    if previous == '$' && d == '$' {
                        break;
                    }
                    previous = d;
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                current.push(c);
                for d in chars.by_ref() {
                    current.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                current.push(c);
                let mut previous = ' ';
                for d in chars.by_ref() {
                    current.push(d);
                    if previous == '*' && d == '/' {
                        break;
                    }
                    previous = d;
                }
            }
            ';' => {
                if !current.trim().is_empty() {
                    statements.push(std::mem::take(&mut current));
                }
                current.clear();
            }
            _ => current.push(c),
        }
    }
    if !strip_comments(&current).trim().is_empty() || statements.is_empty() {
        statements.push(current);
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_clients_send_are_recognized() {
        assert_eq!(command("-- ping"), Some(Command::Empty));
        assert_eq!(command("/* a */ ;"), Some(Command::Empty));
        assert_eq!(command("BEGIN"), Some(Command::Begin));
        assert_eq!(command("start transaction read only"), Some(Command::Begin));
        assert_eq!(command("COMMIT;"), Some(Command::Commit));
        assert_eq!(
            command("SAVEPOINT \"_pg3_1\""),
            Some(Command::Tag("SAVEPOINT"))
        );
        assert_eq!(
            command("ROLLBACK TO SAVEPOINT \"_pg3_1\""),
            Some(Command::Tag("ROLLBACK"))
        );
        assert_eq!(
            command("SET extra_float_digits = 3"),
            Some(Command::Set {
                name: "extra_float_digits".into(),
                value: "3".into()
            })
        );
        assert_eq!(
            command("SET SESSION TIME ZONE 'UTC'"),
            Some(Command::Set {
                name: "timezone".into(),
                value: "UTC".into()
            })
        );
        assert_eq!(
            command("set application_name to 'psql'"),
            Some(Command::Set {
                name: "application_name".into(),
                value: "psql".into()
            })
        );
        assert_eq!(
            command("SHOW TRANSACTION ISOLATION LEVEL"),
            Some(Command::Show("transaction_isolation".into()))
        );
        assert_eq!(command("SELECT 1"), None);
        assert_eq!(command("select '-- not a comment'"), None);
    }

    #[test]
    fn statements_split_at_top_level_semicolons() {
        assert_eq!(
            split_statements("SET a = 1; SELECT ';' AS x -- ;\n; "),
            vec![
                "SET a = 1".to_string(),
                " SELECT ';' AS x -- ;\n".to_string()
            ]
        );
        assert_eq!(split_statements("-- ping"), vec!["-- ping".to_string()]);
        assert_eq!(split_statements("SELECT 1"), vec!["SELECT 1".to_string()]);
    }
}
