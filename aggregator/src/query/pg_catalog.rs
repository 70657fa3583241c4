//! The catalog tables and functions Postgres clients query: `information_schema`
//! (`schemata`, `tables`, `columns`) and the `pg_catalog` tables psql, DBeaver
//! and Grafana's schema browser read (`pg_namespace`, `pg_class`,
//! `pg_attribute`, `pg_type`, `pg_database`, `pg_settings`, and empty ones they
//! join with), plus functions such as `version()`, `current_schema()`,
//! `current_setting()`, `format_type()` and `pg_table_is_visible()`.
//!
//! They describe the collections the caller may read, as tables of the schema
//! `public` of the database `altdb`, built when a statement names them. A
//! collection's oid is derived from its name, so it is the same in every
//! statement. Column types are the Postgres types results are sent as (see
//! `postgres::types`), with altdb's `json` fields as `json`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    new_empty_array, ArrayRef, BooleanArray, Float64Array, Int16Array, Int32Array, Int64Array,
    ListArray, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use pgwire::api::Type;
use postgres_types::Kind;

use altdb_common::schema::FieldType;

use super::table::CollectionSchemaProvider;

/// The database name clients see.
pub const DATABASE: &str = "altdb";
/// The schema collections are tables of.
pub const PUBLIC: &str = "public";
const PUBLIC_OID: i64 = 2200;
const PG_CATALOG_OID: i64 = 11;
const INFORMATION_SCHEMA_OID: i64 = 13_000;
const DATABASE_OID: i64 = 16_384;
const OWNER_OID: i64 = 10;

/// The `pg_catalog` tables altdb keeps empty (no indexes, constraints,
/// defaults, comments, inheritance, collations, functions, extensions, views).
pub const EMPTY_TABLES: &[&str] = &[
    "pg_description",
    "pg_index",
    "pg_constraint",
    "pg_attrdef",
    "pg_inherits",
    "pg_collation",
    "pg_proc",
    "pg_extension",
    "pg_views",
    "pg_matviews",
    // Not tables here at all: only read by statements that are blanked.
    "pg_policy",
    "pg_statistic_ext",
    "pg_publication",
    "pg_publication_rel",
    "pg_publication_namespace",
    "pg_trigger",
    "pg_rewrite",
    "pg_partitioned_table",
    "pg_foreign_table",
    "pg_sequence",
];

/// The columns clients select from the empty catalog tables (`i`: bigint,
/// `t`: text, `b`: boolean, `s`: smallint, `n`: integer).
const EMPTY_TABLE_COLUMNS: &[(&str, &[(&str, char)])] = &[
    (
        "pg_extension",
        &[("oid", 'i'), ("extname", 't'), ("extversion", 't')],
    ),
    (
        "pg_description",
        &[
            ("objoid", 'i'),
            ("classoid", 'i'),
            ("objsubid", 'n'),
            ("description", 't'),
        ],
    ),
    (
        "pg_index",
        &[
            ("indexrelid", 'i'),
            ("indrelid", 'i'),
            ("indnatts", 's'),
            ("indisunique", 'b'),
            ("indisprimary", 'b'),
            ("indisclustered", 'b'),
            ("indisvalid", 'b'),
        ],
    ),
    (
        "pg_constraint",
        &[
            ("oid", 'i'),
            ("conname", 't'),
            ("connamespace", 'i'),
            ("contype", 't'),
            ("conrelid", 'i'),
            ("confrelid", 'i'),
        ],
    ),
    (
        "pg_attrdef",
        &[
            ("oid", 'i'),
            ("adrelid", 'i'),
            ("adnum", 's'),
            ("adbin", 't'),
        ],
    ),
    (
        "pg_inherits",
        &[("inhrelid", 'i'), ("inhparent", 'i'), ("inhseqno", 'n')],
    ),
    (
        "pg_collation",
        &[("oid", 'i'), ("collname", 't'), ("collnamespace", 'i')],
    ),
    (
        "pg_proc",
        &[
            ("oid", 'i'),
            ("proname", 't'),
            ("pronamespace", 'i'),
            ("prorettype", 'i'),
        ],
    ),
    (
        "pg_views",
        &[
            ("schemaname", 't'),
            ("viewname", 't'),
            ("viewowner", 't'),
            ("definition", 't'),
        ],
    ),
    (
        "pg_matviews",
        &[
            ("schemaname", 't'),
            ("matviewname", 't'),
            ("matviewowner", 't'),
            ("definition", 't'),
        ],
    ),
];

fn empty_table(columns: &[(&str, char)]) -> DfResult<RecordBatch> {
    batch(
        columns
            .iter()
            .map(|(name, kind)| match kind {
                'i' => int64(name, vec![]),
                'b' => boolean(name, vec![]),
                's' => int16(name, vec![]),
                'n' => int32(name, vec![]),
                _ => text(name, vec![]),
            })
            .collect(),
    )
}

/// Whether `name` is a `pg_catalog` table (one altdb has, or one it keeps empty).
pub fn is_catalog_table(name: &str) -> bool {
    CatalogSchema::PgCatalog.tables().contains(&name) || EMPTY_TABLES.contains(&name)
}

/// Which of the two catalog schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogSchema {
    PgCatalog,
    InformationSchema,
}

impl CatalogSchema {
    pub fn name(self) -> &'static str {
        match self {
            CatalogSchema::PgCatalog => "pg_catalog",
            CatalogSchema::InformationSchema => "information_schema",
        }
    }

    fn tables(self) -> &'static [&'static str] {
        match self {
            CatalogSchema::PgCatalog => &[
                "pg_namespace",
                "pg_class",
                "pg_attribute",
                "pg_type",
                "pg_database",
                "pg_settings",
                "pg_am",
                "pg_description",
                "pg_index",
                "pg_constraint",
                "pg_attrdef",
                "pg_inherits",
                "pg_collation",
                "pg_proc",
                "pg_roles",
                "pg_user",
                "pg_tables",
                "pg_views",
                "pg_matviews",
                "pg_extension",
            ],
            CatalogSchema::InformationSchema => &["schemata", "tables", "columns", "views"],
        }
    }
}

/// `pg_catalog` or `information_schema` over the collections a statement's
/// caller may read.
#[derive(Debug)]
pub struct CatalogSchemaProvider {
    which: CatalogSchema,
    collections: Arc<CollectionSchemaProvider>,
}

impl CatalogSchemaProvider {
    pub fn new(which: CatalogSchema, collections: Arc<CollectionSchemaProvider>) -> Self {
        Self { which, collections }
    }

    /// The readable collections with their columns: (name, oid, [(column,
    /// Postgres type)]).
    async fn columns(&self) -> DfResult<Vec<(String, i64, Vec<(String, Type)>)>> {
        let mut tables = Vec::new();
        for name in self.collections.table_names() {
            let Some(table) = self.collections.table(&name).await? else {
                continue;
            };
            let json: Vec<String> = match self.collections.collection_fields(&name).await? {
                Some(fields) => fields
                    .fields
                    .fields
                    .iter()
                    .filter(|(_, t)| matches!(t, FieldType::Json))
                    .map(|(n, _)| n.clone())
                    .collect(),
                None => Vec::new(),
            };
            let columns = table
                .schema()
                .fields()
                .iter()
                .map(|field| {
                    let pg = if json.contains(field.name()) {
                        Type::JSON
                    } else {
                        crate::postgres::types::pg_type(field.data_type())
                    };
                    (field.name().clone(), pg)
                })
                .collect();
            tables.push((name.clone(), table_oid(&name), columns));
        }
        Ok(tables)
    }

    async fn build(&self, name: &str) -> DfResult<Option<RecordBatch>> {
        let names = self.collections.table_names();
        let batch = match (self.which, name) {
            (CatalogSchema::InformationSchema, "schemata") => batch(vec![
                text("catalog_name", vec![DATABASE; 3]),
                text(
                    "schema_name",
                    vec![PUBLIC, "pg_catalog", "information_schema"],
                ),
                text("schema_owner", vec![DATABASE; 3]),
            ]),
            (CatalogSchema::InformationSchema, "tables") => {
                let n = names.len();
                batch(vec![
                    text("table_catalog", vec![DATABASE; n]),
                    text("table_schema", vec![PUBLIC; n]),
                    text("table_name", names.iter().map(String::as_str).collect()),
                    text("table_type", vec!["BASE TABLE"; n]),
                    text("is_insertable_into", vec!["NO"; n]),
                ])
            }
            (CatalogSchema::InformationSchema, "columns") => {
                let (mut table, mut column, mut position, mut data_type, mut udt) =
                    (vec![], vec![], vec![], vec![], vec![]);
                for (name, _, columns) in self.columns().await? {
                    for (i, (field, pg)) in columns.iter().enumerate() {
                        table.push(name.clone());
                        column.push(field.clone());
                        position.push(i as i64 + 1);
                        data_type.push(information_schema_type(pg));
                        udt.push(udt_name(pg));
                    }
                }
                let n = table.len();
                batch(vec![
                    text("table_catalog", vec![DATABASE; n]),
                    text("table_schema", vec![PUBLIC; n]),
                    owned("table_name", table),
                    owned("column_name", column),
                    int64("ordinal_position", position),
                    nulls("column_default", n),
                    text("is_nullable", vec!["YES"; n]),
                    owned("data_type", data_type),
                    text("udt_catalog", vec![DATABASE; n]),
                    text("udt_schema", vec!["pg_catalog"; n]),
                    owned("udt_name", udt),
                ])
            }
            (CatalogSchema::InformationSchema, "views") => batch(vec![
                text("table_catalog", vec![]),
                text("table_schema", vec![]),
                text("table_name", vec![]),
                nulls("view_definition", 0),
            ]),
            (CatalogSchema::PgCatalog, "pg_namespace") => batch(vec![
                int64(
                    "oid",
                    vec![PG_CATALOG_OID, PUBLIC_OID, INFORMATION_SCHEMA_OID],
                ),
                text("nspname", vec!["pg_catalog", PUBLIC, "information_schema"]),
                int64("nspowner", vec![OWNER_OID; 3]),
                nulls("nspacl", 3),
            ]),
            (CatalogSchema::PgCatalog, "pg_class") => {
                let n = names.len();
                let oids: Vec<i64> = names.iter().map(|n| table_oid(n)).collect();
                let counts = self.columns_count(&names).await?;
                batch(vec![
                    int64("oid", oids),
                    text("relname", names.iter().map(String::as_str).collect()),
                    int64("relnamespace", vec![PUBLIC_OID; n]),
                    int64("reltype", vec![0; n]),
                    int64("reloftype", vec![0; n]),
                    int64("relowner", vec![OWNER_OID; n]),
                    int64("relam", vec![2; n]),
                    int64("relfilenode", vec![0; n]),
                    int64("reltablespace", vec![0; n]),
                    int32("relpages", vec![0; n]),
                    float64("reltuples", vec![-1.0; n]),
                    int64("reltoastrelid", vec![0; n]),
                    boolean("relhasindex", vec![false; n]),
                    boolean("relisshared", vec![false; n]),
                    text("relpersistence", vec!["p"; n]),
                    text("relkind", vec!["r"; n]),
                    int16("relnatts", counts),
                    int16("relchecks", vec![0; n]),
                    boolean("relhasrules", vec![false; n]),
                    boolean("relhastriggers", vec![false; n]),
                    boolean("relhassubclass", vec![false; n]),
                    boolean("relrowsecurity", vec![false; n]),
                    boolean("relforcerowsecurity", vec![false; n]),
                    boolean("relispopulated", vec![true; n]),
                    text("relreplident", vec!["d"; n]),
                    boolean("relispartition", vec![false; n]),
                    text_list("reloptions", n),
                    nulls("relacl", n),
                    nulls("relpartbound", n),
                ])
            }
            (CatalogSchema::PgCatalog, "pg_attribute") => {
                let (mut rel, mut name, mut type_oid, mut number) =
                    (vec![], vec![], vec![], vec![]);
                for (_, oid, columns) in self.columns().await? {
                    for (i, (field, pg)) in columns.iter().enumerate() {
                        rel.push(oid);
                        name.push(field.clone());
                        type_oid.push(pg.oid() as i64);
                        number.push(i as i16 + 1);
                    }
                }
                let n = rel.len();
                batch(vec![
                    int64("attrelid", rel),
                    owned("attname", name),
                    int64("atttypid", type_oid),
                    int16("attlen", vec![-1; n]),
                    int16("attnum", number),
                    int32("atttypmod", vec![-1; n]),
                    int16("attndims", vec![0; n]),
                    boolean("attnotnull", vec![false; n]),
                    boolean("atthasdef", vec![false; n]),
                    boolean("atthasmissing", vec![false; n]),
                    text("attidentity", vec![""; n]),
                    text("attgenerated", vec![""; n]),
                    boolean("attisdropped", vec![false; n]),
                    boolean("attislocal", vec![true; n]),
                    int64("attcollation", vec![0; n]),
                    nulls("attacl", n),
                    nulls("attoptions", n),
                ])
            }
            (CatalogSchema::PgCatalog, "pg_type") => {
                let types = known_types();
                let n = types.len();
                batch(vec![
                    int64("oid", types.iter().map(|t| t.oid() as i64).collect()),
                    owned(
                        "typname",
                        types.iter().map(|t| t.name().to_string()).collect(),
                    ),
                    int64("typnamespace", vec![PG_CATALOG_OID; n]),
                    int64("typowner", vec![OWNER_OID; n]),
                    int16("typlen", types.iter().map(type_length).collect()),
                    boolean(
                        "typbyval",
                        types.iter().map(|t| type_length(t) > 0).collect(),
                    ),
                    text("typtype", vec!["b"; n]),
                    owned(
                        "typcategory",
                        types.iter().map(|t| category(t).to_string()).collect(),
                    ),
                    boolean("typisdefined", vec![true; n]),
                    text("typdelim", vec![","; n]),
                    int64("typrelid", vec![0; n]),
                    int64("typelem", types.iter().map(element_oid).collect()),
                    int64("typarray", types.iter().map(array_oid).collect()),
                    int64("typbasetype", vec![0; n]),
                    int32("typtypmod", vec![-1; n]),
                    boolean("typnotnull", vec![false; n]),
                    int64("typcollation", vec![0; n]),
                    owned(
                        "typinput",
                        types.iter().map(|t| format!("{}in", t.name())).collect(),
                    ),
                ])
            }
            (CatalogSchema::PgCatalog, "pg_database") => batch(vec![
                int64("oid", vec![DATABASE_OID]),
                text("datname", vec![DATABASE]),
                int64("datdba", vec![OWNER_OID]),
                int32("encoding", vec![6]),
                text("datcollate", vec!["C"]),
                text("datctype", vec!["C"]),
                boolean("datistemplate", vec![false]),
                boolean("datallowconn", vec![true]),
                int32("datconnlimit", vec![-1]),
                nulls("datacl", 1),
            ]),
            (CatalogSchema::PgCatalog, "pg_settings") => {
                let defaults = crate::postgres::session::DEFAULTS;
                batch(vec![
                    text("name", defaults.iter().map(|(k, _)| *k).collect()),
                    text("setting", defaults.iter().map(|(_, v)| *v).collect()),
                ])
            }
            (CatalogSchema::PgCatalog, "pg_am") => batch(vec![
                int64("oid", vec![2]),
                text("amname", vec!["heap"]),
                text("amtype", vec!["t"]),
            ]),
            (CatalogSchema::PgCatalog, "pg_roles" | "pg_user") => batch(vec![
                int64("oid", vec![OWNER_OID]),
                text(
                    if name == "pg_roles" {
                        "rolname"
                    } else {
                        "usename"
                    },
                    vec![DATABASE],
                ),
                boolean(
                    if name == "pg_roles" {
                        "rolsuper"
                    } else {
                        "usesuper"
                    },
                    vec![false],
                ),
            ]),
            (CatalogSchema::PgCatalog, "pg_tables") => {
                let n = names.len();
                batch(vec![
                    text("schemaname", vec![PUBLIC; n]),
                    text("tablename", names.iter().map(String::as_str).collect()),
                    text("tableowner", vec![DATABASE; n]),
                    nulls("tablespace", n),
                    boolean("hasindexes", vec![false; n]),
                    boolean("hasrules", vec![false; n]),
                    boolean("hastriggers", vec![false; n]),
                    boolean("rowsecurity", vec![false; n]),
                ])
            }
            (CatalogSchema::PgCatalog, name) => {
                match EMPTY_TABLE_COLUMNS.iter().find(|(table, _)| *table == name) {
                    Some((_, columns)) => empty_table(columns),
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        batch.map(Some)
    }

    async fn columns_count(&self, names: &[String]) -> DfResult<Vec<i16>> {
        let mut counts = Vec::with_capacity(names.len());
        for name in names {
            let count = match self.collections.table(name).await? {
                Some(table) => table.schema().fields().len() as i16,
                None => 0,
            };
            counts.push(count);
        }
        Ok(counts)
    }
}

#[async_trait]
impl SchemaProvider for CatalogSchemaProvider {
    fn table_names(&self) -> Vec<String> {
        self.which.tables().iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(batch) = self.build(name).await? else {
            return Ok(None);
        };
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.which.tables().contains(&name)
    }
}

/// A collection's oid: derived from its name (above the oids Postgres
/// reserves), so the same in every statement.
pub fn table_oid(name: &str) -> i64 {
    100_000 + (xxhash_rust::xxh3::xxh3_64(name.as_bytes()) % 2_000_000_000) as i64
}

// ---- columns ----

type NamedColumn = (Field, ArrayRef);

fn batch(columns: Vec<NamedColumn>) -> DfResult<RecordBatch> {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    Ok(RecordBatch::try_new(schema, arrays)?)
}

fn text(name: &str, values: Vec<&str>) -> NamedColumn {
    (
        Field::new(name, DataType::Utf8, true),
        Arc::new(StringArray::from(values)),
    )
}

fn owned(name: &str, values: Vec<String>) -> NamedColumn {
    (
        Field::new(name, DataType::Utf8, true),
        Arc::new(StringArray::from(values)),
    )
}

fn nulls(name: &str, n: usize) -> NamedColumn {
    (
        Field::new(name, DataType::Utf8, true),
        Arc::new(StringArray::from(vec![None::<&str>; n])),
    )
}

fn text_list(name: &str, n: usize) -> NamedColumn {
    let field = Arc::new(Field::new_list_field(DataType::Utf8, true));
    (
        Field::new(name, DataType::List(field.clone()), true),
        Arc::new(ListArray::new_null(field, n)),
    )
}

fn int64(name: &str, values: Vec<i64>) -> NamedColumn {
    (
        Field::new(name, DataType::Int64, true),
        Arc::new(Int64Array::from(values)),
    )
}

fn int32(name: &str, values: Vec<i32>) -> NamedColumn {
    (
        Field::new(name, DataType::Int32, true),
        Arc::new(Int32Array::from(values)),
    )
}

fn int16(name: &str, values: Vec<i16>) -> NamedColumn {
    (
        Field::new(name, DataType::Int16, true),
        Arc::new(Int16Array::from(values)),
    )
}

fn float64(name: &str, values: Vec<f64>) -> NamedColumn {
    (
        Field::new(name, DataType::Float64, true),
        Arc::new(Float64Array::from(values)),
    )
}

fn boolean(name: &str, values: Vec<bool>) -> NamedColumn {
    (
        Field::new(name, DataType::Boolean, true),
        Arc::new(BooleanArray::from(values)),
    )
}

// ---- types ----

/// The types altdb's columns are sent as, and their arrays.
fn known_types() -> Vec<Type> {
    vec![
        Type::BOOL,
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::NUMERIC,
        Type::TEXT,
        Type::VARCHAR,
        Type::BYTEA,
        Type::TIMESTAMP,
        Type::TIMESTAMPTZ,
        Type::DATE,
        Type::JSON,
        Type::OID,
        Type::NAME,
        Type::CHAR,
        Type::BOOL_ARRAY,
        Type::INT8_ARRAY,
        Type::FLOAT8_ARRAY,
        Type::TEXT_ARRAY,
        Type::TIMESTAMPTZ_ARRAY,
    ]
}

fn element_oid(t: &Type) -> i64 {
    match t.kind() {
        Kind::Array(element) => element.oid() as i64,
        _ => 0,
    }
}

fn array_oid(t: &Type) -> i64 {
    known_types()
        .iter()
        .find(|array| element_oid(array) == t.oid() as i64)
        .map_or(0, |array| array.oid() as i64)
}

fn type_length(t: &Type) -> i16 {
    match *t {
        Type::BOOL | Type::CHAR => 1,
        Type::INT2 => 2,
        Type::INT4 | Type::FLOAT4 | Type::OID | Type::DATE => 4,
        Type::INT8 | Type::FLOAT8 | Type::TIMESTAMP | Type::TIMESTAMPTZ => 8,
        Type::NAME => 64,
        _ => -1,
    }
}

fn category(t: &Type) -> &'static str {
    match *t {
        Type::BOOL => "B",
        Type::INT2
        | Type::INT4
        | Type::INT8
        | Type::FLOAT4
        | Type::FLOAT8
        | Type::NUMERIC
        | Type::OID => "N",
        Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::DATE => "D",
        Type::JSON => "U",
        _ if element_oid(t) != 0 => "A",
        _ => "S",
    }
}

/// A type as `format_type()` and `information_schema.columns.data_type` name it.
pub fn display_name(t: &Type) -> String {
    match *t {
        Type::BOOL => "boolean".into(),
        Type::INT2 => "smallint".into(),
        Type::INT4 => "integer".into(),
        Type::INT8 => "bigint".into(),
        Type::FLOAT4 => "real".into(),
        Type::FLOAT8 => "double precision".into(),
        Type::VARCHAR => "character varying".into(),
        Type::TIMESTAMP => "timestamp without time zone".into(),
        Type::TIMESTAMPTZ => "timestamp with time zone".into(),
        Type::CHAR => "\"char\"".into(),
        _ => match t.kind() {
            Kind::Array(element) => format!("{}[]", display_name(element)),
            _ => t.name().to_string(),
        },
    }
}

fn information_schema_type(t: &Type) -> String {
    match t.kind() {
        Kind::Array(_) => "ARRAY".into(),
        _ => display_name(t),
    }
}

fn udt_name(t: &Type) -> String {
    match t.kind() {
        Kind::Array(element) => format!("_{}", element.name()),
        _ => t.name().to_string(),
    }
}

// ---- functions ----

/// Registers the Postgres functions clients call, each also under its
/// `pg_catalog.` name.
pub fn register_functions(context: &SessionContext) {
    for function in functions() {
        context.register_udf(ScalarUDF::new_from_impl(function));
    }
}

type Body = fn(&[ScalarValue]) -> ScalarValue;

/// A Postgres function of constant or simple per-row answers; one is another
/// when it has the same name.
#[derive(Debug)]
struct PgFunction {
    name: &'static str,
    aliases: Vec<String>,
    signature: Signature,
    returns: DataType,
    body: Body,
}

fn functions() -> Vec<PgFunction> {
    let function =
        |name: &'static str, signature: Signature, returns: DataType, body: Body| PgFunction {
            name,
            aliases: vec![format!("pg_catalog.{name}")],
            signature,
            returns,
            body,
        };
    let any = |n: usize| match n {
        0 => Signature::nullary(Volatility::Stable),
        n => Signature::any(n, Volatility::Stable),
    };
    vec![
        function("version", any(0), DataType::Utf8, |_| {
            ScalarValue::Utf8(Some(format!(
                "PostgreSQL {} (altdb {}, Apache DataFusion {})",
                crate::postgres::session::SERVER_VERSION,
                env!("CARGO_PKG_VERSION"),
                datafusion::DATAFUSION_VERSION
            )))
        }),
        function("current_schema", any(0), DataType::Utf8, |_| {
            ScalarValue::Utf8(Some(PUBLIC.into()))
        }),
        function("current_database", any(0), DataType::Utf8, |_| {
            ScalarValue::Utf8(Some(DATABASE.into()))
        }),
        function(
            "current_schemas",
            any(1),
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            |_| {
                ScalarValue::List(ScalarValue::new_list_nullable(
                    &[ScalarValue::Utf8(Some(PUBLIC.into()))],
                    &DataType::Utf8,
                ))
            },
        ),
        function(
            "current_setting",
            Signature::variadic_any(Volatility::Stable),
            DataType::Utf8,
            |args| match args.first() {
                Some(ScalarValue::Utf8(Some(name))) => ScalarValue::Utf8(
                    crate::postgres::session::setting_default(name).map(str::to_string),
                ),
                _ => ScalarValue::Utf8(None),
            },
        ),
        function("pg_backend_pid", any(0), DataType::Int32, |_| {
            ScalarValue::Int32(Some(0))
        }),
        function("pg_table_is_visible", any(1), DataType::Boolean, |_| {
            ScalarValue::Boolean(Some(true))
        }),
        function("pg_type_is_visible", any(1), DataType::Boolean, |_| {
            ScalarValue::Boolean(Some(true))
        }),
        function(
            "has_table_privilege",
            Signature::variadic_any(Volatility::Stable),
            DataType::Boolean,
            |_| ScalarValue::Boolean(Some(true)),
        ),
        function(
            "has_schema_privilege",
            Signature::variadic_any(Volatility::Stable),
            DataType::Boolean,
            |_| ScalarValue::Boolean(Some(true)),
        ),
        function("pg_get_userbyid", any(1), DataType::Utf8, |_| {
            ScalarValue::Utf8(Some(DATABASE.into()))
        }),
        function("pg_encoding_to_char", any(1), DataType::Utf8, |_| {
            ScalarValue::Utf8(Some("UTF8".into()))
        }),
        function(
            "obj_description",
            Signature::variadic_any(Volatility::Stable),
            DataType::Utf8,
            |_| ScalarValue::Utf8(None),
        ),
        function("col_description", any(2), DataType::Utf8, |_| {
            ScalarValue::Utf8(None)
        }),
        function(
            "pg_get_expr",
            Signature::variadic_any(Volatility::Stable),
            DataType::Utf8,
            |_| ScalarValue::Utf8(None),
        ),
        function("format_type", any(2), DataType::Utf8, |args| {
            let oid = match args.first().map(|v| v.cast_to(&DataType::Int64)) {
                Some(Ok(ScalarValue::Int64(Some(oid)))) => oid,
                _ => return ScalarValue::Utf8(None),
            };
            let name = u32::try_from(oid)
                .ok()
                .and_then(Type::from_oid)
                .map_or_else(|| "???".to_string(), |t| display_name(&t));
            ScalarValue::Utf8(Some(name))
        }),
        function("quote_ident", any(1), DataType::Utf8, |args| {
            match args.first() {
                Some(ScalarValue::Utf8(Some(name))) => {
                    let plain = name
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                        && name
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                    if plain {
                        ScalarValue::Utf8(Some(name.clone()))
                    } else {
                        ScalarValue::Utf8(Some(format!("\"{}\"", name.replace('"', "\"\""))))
                    }
                }
                _ => ScalarValue::Utf8(None),
            }
        }),
        function(
            "parse_ident",
            Signature::variadic_any(Volatility::Immutable),
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            |args| match args.first() {
                Some(ScalarValue::Utf8(Some(name))) => {
                    let parts: Vec<ScalarValue> = parse_ident(name)
                        .into_iter()
                        .map(|part| ScalarValue::Utf8(Some(part)))
                        .collect();
                    ScalarValue::List(ScalarValue::new_list_nullable(&parts, &DataType::Utf8))
                }
                _ => ScalarValue::List(ScalarValue::new_list_nullable(&[], &DataType::Utf8)),
            },
        ),
        function("to_regtype", any(1), DataType::Int64, |args| {
            match args.first() {
                Some(ScalarValue::Utf8(Some(name))) => {
                    let name = name
                        .trim()
                        .trim_start_matches("pg_catalog.")
                        .to_ascii_lowercase();
                    ScalarValue::Int64(
                        known_types()
                            .iter()
                            .find(|t| t.name() == name || display_name(t) == name)
                            .map(|t| t.oid() as i64),
                    )
                }
                _ => ScalarValue::Int64(None),
            }
        }),
        function("to_regclass", any(1), DataType::Int64, |args| {
            match args.first() {
                Some(ScalarValue::Utf8(Some(name))) => {
                    let name = name
                        .trim()
                        .trim_start_matches("public.")
                        .to_ascii_lowercase();
                    ScalarValue::Int64(Some(table_oid(&name)))
                }
                _ => ScalarValue::Int64(None),
            }
        }),
        function("current_user", any(0), DataType::Utf8, |_| {
            ScalarValue::Utf8(Some(DATABASE.into()))
        }),
    ]
}

impl PartialEq for PgFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for PgFunction {}

impl std::hash::Hash for PgFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

/// `a."B".c` → `[a, B, c]`: unquoted parts folded to lower case.
fn parse_ident(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            c if quoted => current.push(c),
            c => current.extend(c.to_lowercase()),
        }
    }
    parts.push(current);
    parts
}

impl ScalarUDFImpl for PgFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|arg| arg.clone().into_array(rows))
            .collect::<DfResult<Vec<_>>>()?;
        if arrays.is_empty()
            || args
                .args
                .iter()
                .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            let values = args
                .args
                .iter()
                .map(|arg| match arg {
                    ColumnarValue::Scalar(value) => Ok(value.clone()),
                    ColumnarValue::Array(array) => ScalarValue::try_from_array(array, 0),
                })
                .collect::<DfResult<Vec<_>>>()?;
            return Ok(ColumnarValue::Scalar((self.body)(&values)));
        }
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            let values = arrays
                .iter()
                .map(|array| ScalarValue::try_from_array(array, row))
                .collect::<DfResult<Vec<_>>>()?;
            out.push((self.body)(&values));
        }
        if out.is_empty() {
            return Ok(ColumnarValue::Array(new_empty_array(&self.returns)));
        }
        Ok(ColumnarValue::Array(ScalarValue::iter_to_array(out)?))
    }
}
