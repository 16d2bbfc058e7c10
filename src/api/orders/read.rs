//! Reading one order, and listing orders with filters and a cursor.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::OrderView;
use crate::api::AppState;
use crate::api::path::OrderId;
use crate::api::query::{AppQuery, invalid_query};
use crate::api::spec::Api;
use crate::auth::{Caller, Role};
use crate::commands::visible;
use crate::domain::Status;
use crate::error::ApiError;
use crate::store::orders;

/// `GET /orders` and `GET /orders/{id}`.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/orders", get(list))
        .route("/orders/{id}", get(read))
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    OrderId(order_id): OrderId,
) -> Result<Json<OrderView>, ApiError> {
    caller.require(&[Role::Customer, Role::Admin, Role::System])?;
    let order = state
        .store
        .read(move |conn| Ok::<_, ApiError>(orders::find(conn, order_id)?))
        .await?;
    let order = visible(order, order_id, &caller)?;
    Ok(Json(OrderView::from(&order)))
}

/// `GET /orders` and `GET /orders/{id}` in the OpenAPI document.
pub(super) fn describe(api: &mut Api) {
    let roles = [Role::Customer, Role::Admin, Role::System];
    api.get("/api/v1/orders", "listOrders", "List orders, newest first")
        .description("A customer sees only its own orders.")
        .roles(&roles)
        .query::<ListQuery>()
        .json::<OrderPage>(200, "One page of orders.")
        .add();
    api.get("/api/v1/orders/{id}", "getOrder", "Read one order")
        .description("A customer sees only its own orders; another's is answered 404.")
        .roles(&roles)
        .order_path()
        .json::<OrderView>(200, "The order.")
        .order_links(200)
        .add();
}

/// The query of `GET /orders`. The fields are read as text so that a bad value is answered with
/// its name; the document gives their real types.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only this customer's orders (a customer may name only itself).
    #[schemars(with = "Option<Uuid>")]
    customer_id: Option<String>,
    /// Only orders in this status.
    #[schemars(with = "Option<Status>")]
    status: Option<String>,
    /// Orders per page, 1 to 100; 20 when absent.
    #[schemars(with = "Option<u32>", range(min = 1, max = MAX_PAGE))]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[schemars(with = "Option<Uuid>")]
    cursor: Option<String>,
}

const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

/// One page of `GET /orders`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OrderPage {
    /// Newest first.
    orders: Vec<OrderView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<Uuid>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<ListQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    caller.require(&[Role::Customer, Role::Admin, Role::System])?;
    let bad = |name: &str, why: String| invalid_query(format!("{name}: {why}"));
    let uuid = |name: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| Uuid::parse_str(s).map_err(|_| bad(name, format!("`{s}` is not a UUID"))))
            .transpose()
    };
    let mut customer_id = uuid("customer_id", &q.customer_id)?;
    if caller.role == Role::Customer {
        match customer_id {
            Some(id) if id != caller.user_id => {
                return Err(ApiError::Forbidden(
                    "a customer lists only its own orders".into(),
                ));
            }
            _ => customer_id = Some(caller.user_id),
        }
    }
    let status = q
        .status
        .as_deref()
        .map(|s| Status::parse(s).ok_or_else(|| bad("status", format!("unknown status `{s}`"))))
        .transpose()?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| bad("limit", format!("must be 1 to {MAX_PAGE}, got `{s}`")))?,
    };
    let filter = orders::Filter {
        customer_id,
        status,
        before: uuid("cursor", &q.cursor)?,
        limit: limit + 1,
    };
    let mut found = state
        .store
        .read(move |conn| Ok::<_, ApiError>(orders::list(conn, &filter)?))
        .await?;
    let next_cursor = if found.len() > limit as usize {
        found.truncate(limit as usize);
        found.last().map(|o| o.order_id)
    } else {
        None
    };
    Ok(Json(OrderPage {
        orders: found.iter().map(OrderView::from).collect(),
        next_cursor,
    }))
}
