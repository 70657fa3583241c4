//! Differential test: a few hundred generated queries (filters through the indexes
//! and scans, aggregates, GROUP BY, joins, window functions, subqueries, ORDER BY
//! with LIMIT/OFFSET whose ties are resolved) over generated documents (nested
//! fields, NULLs and missing fields, mixed types, skew, upserts, a field that only
//! appears late), answered by a cluster of 2 leaves and 6 shards and compared with
//! DuckDB's answers on the same data.
//!
//! `ALTDB_DIFF_SEED` and `ALTDB_DIFF_QUERIES` explore other query sets; a failure
//! prints the seed and the SQL of every query that differs.

use std::fmt::Write as _;
use std::io::Write as _;

use altdb_tests::data::{self, Rng};
use altdb_tests::oracle::{compare, expected, Case, Table};
use altdb_tests::{Cluster, ClusterOptions};
use serde_json::json;

const DOCS: u64 = 40_000;
const DATA_SEED: u64 = 7_000_003;
const DEFAULT_QUERIES: usize = 300;
const DEFAULT_SEED: u64 = 1;
/// Documents from this id on carry a `meta` object the earlier ones lack.
const LATE_FIELD_FROM: u64 = 34_000;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
    Text,
    Bool,
    Time,
}

struct Column {
    name: &'static str,
    kind: Kind,
    /// Few enough distinct values to group by.
    groupable: bool,
}

const COLUMNS: &[Column] = &[
    Column {
        name: "id",
        kind: Kind::Int,
        groupable: false,
    },
    Column {
        name: "qty",
        kind: Kind::Int,
        groupable: true,
    },
    Column {
        name: "\"user.age\"",
        kind: Kind::Int,
        groupable: true,
    },
    Column {
        name: "amount",
        kind: Kind::Float,
        groupable: false,
    },
    Column {
        name: "score",
        kind: Kind::Float,
        groupable: false,
    },
    Column {
        name: "event",
        kind: Kind::Text,
        groupable: true,
    },
    Column {
        name: "\"user.geo.country\"",
        kind: Kind::Text,
        groupable: true,
    },
    Column {
        name: "\"user.geo.city\"",
        kind: Kind::Text,
        groupable: true,
    },
    Column {
        name: "\"user.id\"",
        kind: Kind::Text,
        groupable: false,
    },
    Column {
        name: "hi_card",
        kind: Kind::Text,
        groupable: false,
    },
    Column {
        name: "code",
        kind: Kind::Text,
        groupable: true,
    },
    Column {
        name: "note",
        kind: Kind::Text,
        groupable: true,
    },
    Column {
        name: "\"meta.source\"",
        kind: Kind::Text,
        groupable: true,
    },
    Column {
        name: "\"meta.rank\"",
        kind: Kind::Int,
        groupable: true,
    },
    Column {
        name: "flag",
        kind: Kind::Bool,
        groupable: true,
    },
    Column {
        name: "_event_time",
        kind: Kind::Time,
        groupable: false,
    },
];

const EVENTS: &[&str] = &["view", "click", "buy", "share", "nope"];
const COUNTRIES: &[&str] = &["NO", "DE", "FR", "US", "JP", "XX"];
const CITIES: &[&str] = &[
    "Oslo", "Bergen", "Berlin", "Hamburg", "Paris", "Boston", "Austin", "Osaka",
];
const CODES: &[&str] = &["0", "3", "7", "9", "E0", "E1", "E5", "E9", "X"];
const NOTES: &[&str] = &[
    "the quick brown fox",
    "slow and steady",
    "quick checkout",
    "abandoned cart",
    "returned item",
];
const WORDS: &[&str] = &[
    "quick", "cart", "fox", "steady", "item", "checkout", "absent",
];
const SOURCES: &[&str] = &["web", "app", "api"];

/// Query generator: every query it makes has a deterministic answer (a total order
/// wherever rows are ordered or limited).
struct Generator {
    rng: Rng,
}

impl Generator {
    fn chance(&mut self, percent: u64) -> bool {
        self.rng.below(100) < percent
    }

    fn column(&mut self, filter: impl Fn(&Column) -> bool) -> &'static Column {
        let candidates: Vec<&'static Column> = COLUMNS.iter().filter(|c| filter(c)).collect();
        candidates[self.rng.below(candidates.len() as u64) as usize]
    }

    fn text_value(&mut self, column: &Column) -> String {
        match column.name {
            "event" => self.rng.pick(EVENTS).into(),
            "\"user.geo.country\"" => self.rng.pick(COUNTRIES).into(),
            "\"user.geo.city\"" => self.rng.pick(CITIES).into(),
            "\"user.id\"" => format!("u{}", self.rng.skewed(1000)),
            "hi_card" => format!("k{}", self.rng.below(20_000)),
            "code" => self.rng.pick(CODES).into(),
            "note" => self.rng.pick(NOTES).into(),
            "\"meta.source\"" => self.rng.pick(SOURCES).into(),
            other => unreachable!("no text values for {other}"),
        }
    }

    /// A literal of the column's type, mostly from the values the data holds.
    fn literal(&mut self, column: &Column) -> String {
        match column.kind {
            Kind::Int => match column.name {
                "id" => self.rng.below(DOCS + 10).to_string(),
                "qty" => self.rng.below(12).to_string(),
                "\"meta.rank\"" => self.rng.below(6).to_string(),
                _ => (16 + self.rng.below(64)).to_string(),
            },
            Kind::Float => match column.name {
                "amount" => format!("{:.2}", self.rng.below(20_000) as f64 / 100.0),
                _ if self.chance(30) => format!("{}.5", self.rng.below(1000)),
                _ => self.rng.below(1000).to_string(),
            },
            Kind::Text => format!("'{}'", self.text_value(column)),
            Kind::Bool => if self.chance(50) { "true" } else { "false" }.into(),
            Kind::Time => {
                let day = 1 + self.rng.below(20);
                let hour = self.rng.below(24);
                format!("TIMESTAMP '2024-01-{day:02} {hour:02}:00:00'")
            }
        }
    }

    fn literals(&mut self, column: &Column, count: u64) -> String {
        (0..count)
            .map(|_| self.literal(column))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One comparison on one column (qualified with `alias.` when given).
    fn atom(&mut self, alias: &str) -> String {
        if self.chance(6) {
            return format!("search({alias}note, '{}')", self.rng.pick(WORDS));
        }
        if self.chance(6) {
            return self.expression_atom(alias);
        }
        let column = self.column(|_| true);
        let name = format!("{alias}{}", column.name);
        if self.chance(8) {
            let not = if self.chance(50) { " NOT" } else { "" };
            return format!("{name} IS{not} NULL");
        }
        match column.kind {
            Kind::Int | Kind::Float | Kind::Time => match self.rng.below(6) {
                0 => {
                    let (a, b) = (self.literal(column), self.literal(column));
                    format!("{name} BETWEEN {a} AND {b}")
                }
                1 if column.kind != Kind::Time => {
                    let count = 1 + self.rng.below(4);
                    let not = if self.chance(25) { " NOT" } else { "" };
                    format!("{name}{not} IN ({})", self.literals(column, count))
                }
                _ => {
                    let op = self.rng.pick(&["=", "<>", "<", "<=", ">", ">="]);
                    format!("{name} {op} {}", self.literal(column))
                }
            },
            Kind::Text => match self.rng.below(7) {
                0 | 1 => {
                    let count = 1 + self.rng.below(4);
                    let not = if self.chance(25) { " NOT" } else { "" };
                    format!("{name}{not} IN ({})", self.literals(column, count))
                }
                2 => {
                    let value = self.text_value(column);
                    let cut = 1 + self.rng.below(value.len() as u64) as usize;
                    let not = if self.chance(20) { " NOT" } else { "" };
                    format!("{name}{not} LIKE '{}%'", &value[..cut])
                }
                3 => {
                    let value = self.text_value(column);
                    let start = self.rng.below(value.len() as u64) as usize;
                    let end = (start + 1 + self.rng.below(3) as usize).min(value.len());
                    format!("{name} LIKE '%{}%'", &value[start..end])
                }
                _ => {
                    let op = self.rng.pick(&["=", "=", "<>", "<", ">="]);
                    format!("{name} {op} {}", self.literal(column))
                }
            },
            Kind::Bool => match self.rng.below(3) {
                0 => name,
                1 => format!("NOT {name}"),
                _ => format!("{name} = {}", self.literal(column)),
            },
        }
    }

    /// A predicate over computed values, which no index answers.
    fn expression_atom(&mut self, alias: &str) -> String {
        match self.rng.below(5) {
            0 => format!("{alias}qty * 2 + 1 > {}", self.rng.below(22)),
            1 => format!("abs({alias}score - 500) < {}", self.rng.below(500)),
            2 => format!("lower({alias}\"user.geo.city\") LIKE 'b%'"),
            3 => format!("coalesce({alias}\"user.age\", 0) < {}", self.rng.below(80)),
            _ => format!(
                "{alias}id % {} = {}",
                2 + self.rng.below(50),
                self.rng.below(2)
            ),
        }
    }

    /// AND/OR/NOT combinations of atoms, `depth` levels deep at most.
    fn predicate(&mut self, alias: &str, depth: u32) -> String {
        if depth == 0 || self.chance(40) {
            return self.atom(alias);
        }
        match self.rng.below(5) {
            0 => format!("NOT ({})", self.predicate(alias, depth - 1)),
            1 | 2 => format!(
                "({} OR {})",
                self.predicate(alias, depth - 1),
                self.predicate(alias, depth - 1)
            ),
            _ => format!(
                "{} AND {}",
                self.predicate(alias, depth - 1),
                self.predicate(alias, depth - 1)
            ),
        }
    }

    fn where_clause(&mut self, alias: &str, percent: u64) -> String {
        if self.chance(percent) {
            format!(" WHERE {}", self.predicate(alias, 2))
        } else {
            String::new()
        }
    }

    fn aggregate(&mut self, alias: &str) -> String {
        match self.rng.below(9) {
            0 => "COUNT(*)".into(),
            1 => {
                let column = self.column(|_| true);
                format!("COUNT({alias}{})", column.name)
            }
            2 => {
                let column = self.column(|c| c.kind != Kind::Time && c.kind != Kind::Bool);
                format!("COUNT(DISTINCT {alias}{})", column.name)
            }
            3 | 4 => {
                let column = self.column(|c| matches!(c.kind, Kind::Int | Kind::Float));
                let function = self.rng.pick(&["SUM", "AVG"]);
                format!("{function}({alias}{})", column.name)
            }
            _ => {
                let column = self.column(|c| c.kind != Kind::Bool);
                let function = self.rng.pick(&["MIN", "MAX"]);
                format!("{function}({alias}{})", column.name)
            }
        }
    }

    /// 1–3 aggregates, named `a0`, `a1`, .. (DataFusion wants distinct names).
    fn aggregates(&mut self, alias: &str) -> String {
        let count = 1 + self.rng.below(3);
        (0..count)
            .map(|i| format!("{} AS a{i}", self.aggregate(alias)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn group_key(&mut self) -> String {
        match self.rng.below(8) {
            0 => "date_trunc('day', _event_time)".into(),
            1 => {
                "CASE WHEN amount > 100 THEN 'big' WHEN amount IS NULL THEN 'none' ELSE 'small' END"
                    .into()
            }
            2 => format!("qty % {}", 2 + self.rng.below(4)),
            _ => self.column(|c| c.groupable).name.into(),
        }
    }

    /// One query and whether its rows come in a defined order.
    fn query(&mut self) -> (String, bool) {
        match self.rng.below(20) {
            0..=3 => {
                let sql = format!(
                    "SELECT COUNT(*) AS n, {} FROM events{}",
                    self.aggregates(""),
                    self.where_clause("", 95)
                );
                (sql, true)
            }
            4..=8 => {
                let keys: Vec<String> = (0..1 + self.rng.below(2))
                    .map(|i| format!("{} AS k{i}", self.group_key()))
                    .collect();
                let positions: Vec<String> = (1..=keys.len())
                    .map(|i| format!("{i} NULLS FIRST"))
                    .collect();
                let having = if self.chance(25) {
                    format!(" HAVING COUNT(*) > {}", self.rng.below(500))
                } else {
                    String::new()
                };
                let sql = format!(
                    "SELECT {}, COUNT(*) AS n, {} FROM events{} GROUP BY {}{having} ORDER BY {}",
                    keys.join(", "),
                    self.aggregates(""),
                    self.where_clause("", 70),
                    (1..=keys.len())
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    positions.join(", ")
                );
                (sql, true)
            }
            9..=11 => {
                // Top-k rows; `id` breaks ties.
                let by = self.column(|c| c.name != "id");
                let shown = self.column(|_| true);
                let direction = self.rng.pick(&["ASC", "DESC"]);
                let nulls = self.rng.pick(&["NULLS FIRST", "NULLS LAST"]);
                let offset = if self.chance(25) {
                    format!(" OFFSET {}", self.rng.below(30))
                } else {
                    String::new()
                };
                if self.chance(40) {
                    // Wide rows: chosen by the filter and sort columns, fetched whole.
                    let sql = format!(
                        "SELECT id, event, qty, amount, score, code, note, hi_card, \"user.id\", \"user.geo.city\", \"meta.source\", flag FROM events{} ORDER BY {} {direction} {nulls}, id LIMIT {}{offset}",
                        self.where_clause("", 80),
                        by.name,
                        1 + self.rng.below(40)
                    );
                    return (sql, true);
                }
                let sql = format!(
                    "SELECT id, {} AS b, {} AS s FROM events{} ORDER BY {} {direction} {nulls}, id LIMIT {}{offset}",
                    by.name,
                    shown.name,
                    self.where_clause("", 80),
                    by.name,
                    1 + self.rng.below(40)
                );
                (sql, true)
            }
            12 => {
                // Ordered by a column with ties, only that column shown.
                let by = self.column(|c| c.kind != Kind::Bool);
                let sql = format!(
                    "SELECT {0} FROM events{1} ORDER BY {0} DESC NULLS LAST LIMIT {2}",
                    by.name,
                    self.where_clause("", 70),
                    1 + self.rng.below(100)
                );
                (sql, true)
            }
            13 => {
                let key = self.column(|c| c.groupable);
                let sql = format!(
                    "SELECT DISTINCT {0} FROM events{1} ORDER BY {0} NULLS FIRST",
                    key.name,
                    self.where_clause("", 70)
                );
                (sql, true)
            }
            14 | 15 => {
                let (join, tier_filter) = if self.chance(50) {
                    (
                        "JOIN users u",
                        format!(" AND u.signup_year >= {}", 2015 + self.rng.below(9)),
                    )
                } else {
                    (
                        "LEFT JOIN (SELECT * FROM users WHERE tier <> 'bronze') u",
                        String::new(),
                    )
                };
                let filter = if self.chance(70) {
                    format!(" AND {}", self.predicate("e.", 1))
                } else {
                    String::new()
                };
                let sql = format!(
                    "SELECT u.tier, COUNT(*) AS n, {} FROM events e {join} ON e.\"user.id\" = u.uid{tier_filter} WHERE TRUE{filter} GROUP BY u.tier ORDER BY 1 NULLS FIRST",
                    self.aggregates("e.")
                );
                (sql, true)
            }
            16 => {
                let key = self.column(|c| c.groupable);
                let by = self.column(|c| c.kind != Kind::Bool && c.name != "id");
                let function = self.rng.pick(&["ROW_NUMBER()", "RANK()", "DENSE_RANK()"]);
                // RANK and DENSE_RANK tie; ordering by id too keeps the shown rows defined.
                let sql = format!(
                    "SELECT k, id, r FROM (SELECT {0} AS k, id, {function} OVER (PARTITION BY {0} ORDER BY {1} DESC NULLS LAST, id) AS r FROM events{2}) AS t WHERE r <= 3 ORDER BY k NULLS FIRST, r, id",
                    key.name,
                    by.name,
                    self.where_clause("", 60)
                );
                (sql, true)
            }
            17 => {
                let key = self.column(|c| c.groupable);
                let sql = format!(
                    "SELECT id, qty, SUM(qty) OVER (PARTITION BY {0} ORDER BY id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s, LAG(qty) OVER (PARTITION BY {0} ORDER BY id) AS prev FROM events{1} ORDER BY id LIMIT 60",
                    key.name,
                    self.where_clause("", 80)
                );
                (sql, true)
            }
            18 => {
                let key = self.column(|c| c.groupable);
                let sql = format!(
                    "SELECT k, c, RANK() OVER (ORDER BY c DESC) AS r, SUM(c) OVER (ORDER BY k NULLS FIRST ROWS UNBOUNDED PRECEDING) AS running FROM (SELECT {} AS k, COUNT(*) AS c FROM events{} GROUP BY 1) AS g ORDER BY k NULLS FIRST",
                    key.name,
                    self.where_clause("", 60)
                );
                (sql, true)
            }
            _ => {
                let sql = if self.chance(50) {
                    format!(
                        "SELECT COUNT(*), SUM(qty) FROM events WHERE \"user.id\" IN (SELECT uid FROM users WHERE tier = '{}' AND signup_year > {}) AND {}",
                        self.rng.pick(&["gold", "silver", "bronze"]),
                        2014 + self.rng.below(9),
                        self.predicate("", 1)
                    )
                } else {
                    format!(
                        "SELECT COUNT(*), MIN(id) FROM events WHERE amount > (SELECT AVG(amount) FROM events WHERE {})",
                        self.predicate("", 1)
                    )
                };
                (sql, true)
            }
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn generated_queries_equal_duckdb() -> anyhow::Result<()> {
    let seed: u64 = env_or("ALTDB_DIFF_SEED", DEFAULT_SEED);
    let count: usize = env_or("ALTDB_DIFF_QUERIES", DEFAULT_QUERIES);

    let cluster = Cluster::start(ClusterOptions {
        leaves: 2,
        seal_rows: 5_000,
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({
        "name": "events", "num_shards": 6, "id_field": "id", "event_time_field": "ts",
        "text_fields": ["note"]
    }))?;
    cluster.create_collection(json!({"name": "users", "num_shards": 2, "id_field": "uid"}))?;

    let mut docs = data::events(DATA_SEED, DOCS);
    for doc in docs.iter_mut() {
        let id = doc["id"].as_u64().unwrap_or_default();
        if id >= LATE_FIELD_FROM {
            doc["meta"] = json!({"source": SOURCES[(id % 3) as usize], "rank": id % 5});
        }
    }
    cluster.write_docs("events", &docs, 4_000)?;
    cluster.write_docs("users", &data::users(), 1_000)?;
    // Upsert a slice after most rows are sealed: changed values, a field removed.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut updated = Vec::new();
    for doc in docs
        .iter_mut()
        .filter(|d| d["id"].as_u64().is_some_and(|id| id % 53 == 0))
    {
        doc["qty"] = json!(doc["qty"].as_u64().unwrap_or_default() + 3);
        if let Some(object) = doc.as_object_mut() {
            object.remove("amount");
        }
        updated.push(doc.clone());
    }
    cluster.write_docs("events", &updated, 500)?;

    let events_path = cluster.dir.path().join("events.ndjson");
    let users_path = cluster.dir.path().join("users.ndjson");
    for (path, rows) in [(&events_path, &docs), (&users_path, &data::users())] {
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        for row in rows.iter() {
            writeln!(file, "{row}")?;
        }
    }

    let mut generator = Generator {
        rng: Rng::new(seed),
    };
    let queries: Vec<(String, String, bool)> = (0..count)
        .map(|i| {
            let (sql, ordered) = generator.query();
            (format!("q{i}"), sql, ordered)
        })
        .collect();
    let cases: Vec<Case<'_>> = queries
        .iter()
        .map(|(name, sql, ordered)| Case {
            name,
            sql,
            ordered: *ordered,
        })
        .collect();
    let answers = expected(
        cluster.dir.path(),
        &[
            Table {
                name: "events",
                path: &events_path,
                id_field: Some("id"),
                time_field: Some("ts"),
            },
            Table {
                name: "users",
                path: &users_path,
                id_field: Some("uid"),
                time_field: None,
            },
        ],
        &cases,
    )?;

    let mut failures = Vec::new();
    let mut non_empty = 0;
    for case in &cases {
        let answer = &answers[case.name];
        if let Some(error) = answer.get("error") {
            failures.push(format!(
                "{}: duckdb failed: {error}\n  {}",
                case.name, case.sql
            ));
            continue;
        }
        let expected: Vec<Vec<serde_json::Value>> = serde_json::from_value(answer["rows"].clone())?;
        match cluster.rows(case.sql) {
            Ok(actual) => {
                if let Err(difference) = compare(case, &actual, &expected) {
                    failures.push(format!("{difference}\n  {}", case.sql));
                }
            }
            Err(error) => failures.push(format!("{}: {error}", case.name)),
        }
        let counts_something = expected
            .iter()
            .any(|row| row.iter().any(|v| !v.is_null() && v != &json!(0)));
        if counts_something {
            non_empty += 1;
        }
    }
    let mut report = String::new();
    for failure in &failures {
        let _ = writeln!(report, "{failure}\n");
    }
    assert!(
        failures.is_empty(),
        "{} of {count} generated queries (seed {seed}) differ from DuckDB:\n{report}",
        failures.len(),
    );
    // The generator must not drift into trivially empty answers.
    assert!(
        non_empty * 10 >= count * 7,
        "only {non_empty} of {count} queries had a non-empty answer"
    );
    Ok(())
}
