//! Collections as DataFusion tables.
//!
//! [`CollectionSchemaProvider`] resolves a table name through the catalog and asks
//! every leaf for its fields, merging them into the collection-wide schema the
//! query is planned with; [`CollectionTable::scan`] returns a
//! [`DistributedScanExec`] over all shards.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use altdb_common::collection::{CollectionSpec, DLQ_COLLECTION};
use altdb_common::columns::{EVENT_TIME_COLUMN, ID_COLUMN, SCORE_COLUMN};
use altdb_common::rpc::ScanSpec;
use altdb_common::schema::FieldType;

use super::fields::FieldsCache;
use super::remote::{DistributedScanExec, ScanTarget};
use crate::access::{DlqScope, Principal, Resource};
use crate::catalog::Catalog;
use crate::cluster::{Cluster, CollectionFields};
use crate::error::AggregatorError;

/// Resolves collections for one query.
#[derive(Debug)]
pub struct CollectionSchemaProvider {
    catalog: Arc<dyn Catalog>,
    cluster: Cluster,
    fields: Arc<FieldsCache>,
    names: Vec<String>,
    options: TableOptions,
    /// Collections planned with remembered fields.
    pub remembered: Mutex<Vec<String>>,
    /// The fields each collection is planned with, fetched once per statement.
    planned: Mutex<HashMap<String, (Arc<CollectionFields>, bool)>>,
    /// Names of table functions (`generate_series`, ..): the planner looks them up
    /// here first, and one that is no collection is theirs, not an error.
    table_functions: HashSet<String>,
    /// Who runs the statement: every collection it reads is checked here.
    principal: Principal,
}

impl CollectionSchemaProvider {
    pub fn new(
        catalog: Arc<dyn Catalog>,
        cluster: Cluster,
        fields: Arc<FieldsCache>,
        names: Vec<String>,
        options: TableOptions,
        table_functions: HashSet<String>,
        principal: Principal,
    ) -> Self {
        Self {
            principal,
            catalog,
            cluster,
            fields,
            names,
            options,
            remembered: Mutex::new(Vec::new()),
            planned: Mutex::new(HashMap::new()),
            table_functions,
        }
    }

    /// The fields to plan `collection` with: remembered ones if allowed and known
    /// (`true`), else fresh from the leaves (then remembered).
    async fn fields(&self, spec: &CollectionSpec) -> DfResult<(Arc<CollectionFields>, bool)> {
        let collection = spec.name.as_str();
        let planned = self
            .planned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(collection)
            .cloned();
        if let Some(planned) = planned {
            return Ok(planned);
        }
        let fields = self.fetch_fields(spec).await?;
        self.planned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(collection.to_string(), fields.clone());
        Ok(fields)
    }

    async fn fetch_fields(&self, spec: &CollectionSpec) -> DfResult<(Arc<CollectionFields>, bool)> {
        let collection = spec.name.as_str();
        if self.options.remembered_fields {
            if let Some(fields) = self.fields.get(collection) {
                self.remembered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(collection.to_string());
                return Ok((fields, true));
            }
        }
        let fields = Arc::new(self.cluster.collection_fields(spec).await?);
        self.fields.put(collection, fields.clone());
        Ok((fields, false))
    }

    /// The fields `name` is planned with, or `None` if it is not a collection.
    pub async fn collection_fields(&self, name: &str) -> DfResult<Option<Arc<CollectionFields>>> {
        let spec = self
            .catalog
            .get(name)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        match spec {
            Some(spec) => {
                self.principal.require_read(name)?;
                Ok(Some(self.fields(&spec).await?.0))
            }
            None => Ok(None),
        }
    }
}

/// `_dlq` as a caller who may read the dead letters of some collections only
/// sees it: the rows whose `collection` one of `resources` covers.
fn dead_letters_of(
    table: Arc<dyn TableProvider>,
    resources: &[Resource],
) -> DfResult<Arc<dyn TableProvider>> {
    use datafusion::logical_expr::{col, lit, LogicalPlanBuilder};
    let column = "collection";
    let predicate = if table.schema().column_with_name(column).is_none() {
        lit(false)
    } else {
        resources
            .iter()
            .map(|resource| match resource.as_str().strip_suffix('*') {
                Some(prefix) => {
                    datafusion::functions::expr_fn::starts_with(col(column), lit(prefix))
                }
                None => col(column).eq(lit(resource.as_str())),
            })
            .reduce(Expr::or)
            .unwrap_or(lit(false))
    };
    let plan = LogicalPlanBuilder::scan(
        DLQ_COLLECTION,
        datafusion::datasource::provider_as_source(table),
        None,
    )?
    .filter(predicate)?
    .build()?;
    Ok(Arc::new(datafusion::datasource::ViewTable::new(plan, None)))
}

#[async_trait]
impl SchemaProvider for CollectionSchemaProvider {
    fn table_names(&self) -> Vec<String> {
        self.names.clone()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let spec = self
            .catalog
            .get(name)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let Some(spec) = spec else {
            if self.table_functions.contains(name) {
                return Ok(None);
            }
            // A caller is not told whether a collection it may not read exists.
            self.principal.require_read(name)?;
            // Only queries are planned (`read_only_frame`), so a name looked up is a
            // collection the statement reads.
            return Err(DataFusionError::External(Box::new(
                AggregatorError::CollectionNotFound(name.to_string()),
            )));
        };
        self.principal.require_read(name)?;
        let (fields, remembered) = self.fields(&spec).await?;
        let dead_letters = (spec.name == DLQ_COLLECTION).then(|| self.principal.dlq_scope());
        let table = Arc::new(CollectionTable::new(
            spec,
            fields,
            remembered,
            self.cluster.clone(),
            self.options.clone(),
        ));
        match dead_letters {
            Some(DlqScope::Only(resources)) => Ok(Some(dead_letters_of(table, &resources)?)),
            _ => Ok(Some(table)),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

/// How the collections of one statement are read.
#[derive(Debug, Clone)]
pub struct TableOptions {
    /// Collections expose `_score` (the statement searches).
    pub scored: bool,
    /// Leaves may answer filters from their indexes (off only to compare).
    pub use_index: bool,
    /// Leaves report how they ran their fragments (`EXPLAIN ANALYZE`).
    pub profile: bool,
    /// Plan with the fields remembered from an earlier statement when there are
    /// some (fragments then carry their fingerprints, see [`super::fields`]).
    pub remembered_fields: bool,
    /// Read only the copies on this leaf (`QueryOptions::only_leaf`).
    pub only_leaf: Option<Arc<str>>,
}

/// One collection, with the schema merged from every leaf at planning time.
#[derive(Debug)]
pub struct CollectionTable {
    target: Arc<ScanTarget>,
    use_index: bool,
    fields: Arc<CollectionFields>,
    schema: SchemaRef,
}

impl CollectionTable {
    /// `remembered`: `fields` were remembered, not just fetched.
    pub fn new(
        spec: CollectionSpec,
        fields: Arc<CollectionFields>,
        remembered: bool,
        cluster: Cluster,
        options: TableOptions,
    ) -> Self {
        let mut schema = fields.fields.to_arrow_schema();
        if options.scored {
            let mut columns: Vec<Field> =
                schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            columns.push(Field::new(SCORE_COLUMN, DataType::Float64, true));
            schema = Arc::new(Schema::new(columns));
        }
        Self {
            target: Arc::new(ScanTarget {
                collection: spec,
                cluster,
                profile: options.profile,
                remembered: remembered.then(|| fields.clone()),
                only_leaf: options.only_leaf.clone(),
            }),
            fields,
            schema,
            use_index: options.use_index,
        }
    }

    fn column_type(&self, name: &str) -> FieldType {
        match name {
            ID_COLUMN => FieldType::Utf8,
            EVENT_TIME_COLUMN => FieldType::Timestamp,
            SCORE_COLUMN => FieldType::Float64,
            other => self
                .fields
                .fields
                .fields
                .get(other)
                .cloned()
                .unwrap_or(FieldType::Null),
        }
    }
}

#[async_trait]
impl TableProvider for CollectionTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let columns = indices
            .iter()
            .map(|&i| {
                let name = self.schema.field(i).name().clone();
                let field_type = self.column_type(&name);
                (name, field_type)
            })
            .collect();
        let spec = ScanSpec {
            collection: self.target.collection.name.clone(),
            columns,
            limit,
            use_index: self.use_index,
        };
        Ok(Arc::new(DistributedScanExec::new(
            spec,
            self.target.clone(),
        )))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Filters run inside the leaf fragment (FilterExec above the scan); the leaf
        // hands them to its scan too, which reads only the rows its indexes select.
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }
}

impl From<AggregatorError> for DataFusionError {
    fn from(error: AggregatorError) -> Self {
        DataFusionError::External(Box::new(error))
    }
}
