//! Route templates (SPEC §4.2). STUB: to be implemented.

use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Route {
    pub id: Arc<str>,
    pub methods: Vec<http::Method>,
    pub path: String,
    pub content_types: Option<Vec<String>>,
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("invalid routes file: {0}")]
    Parse(String),
}

impl RouteTable {
    pub fn builtin() -> RouteTable {
        RouteTable::default()
    }
    pub fn from_toml(text: &str) -> Result<RouteTable, RoutesError> {
        let _ = text;
        Ok(RouteTable::default())
    }
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}
impl RouteTable {
    pub fn pair_count(&self) -> usize {
        self.routes.iter().map(|r| r.methods.len()).sum()
    }
}
