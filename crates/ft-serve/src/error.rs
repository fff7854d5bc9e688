//! Errors as OpenAI returns them: an HTTP status and `{"error": {message, type, param, code}}`.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::openai::{ErrorBody, ErrorDetail};

/// An error a request ends with.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub detail: ErrorDetail,
    /// Seconds for `Retry-After` (429/503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail {
                message: message.into(),
                kind: kind.to_string(),
                param: None,
                code: None,
            },
            retry_after: None,
        }
    }

    fn with_code(mut self, code: &str) -> Self {
        self.detail.code = Some(code.to_string());
        self
    }

    /// 400: a bad value in field `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        let mut error = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        error.detail.param = Some(param.to_string());
        error
    }

    /// 400: a body that is not the JSON the endpoint takes.
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 401: missing or wrong API key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing or invalid API key: send `Authorization: Bearer <key>`",
        )
        .with_code("invalid_api_key")
    }

    /// 403: an action the server was started without.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    /// 404: `model` names neither the base nor an adapter.
    pub fn model_not_found(model: &str) -> Self {
        let mut error = Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!(
                "the model `{model}` does not exist: GET /v1/models lists the base and adapters"
            ),
        )
        .with_code("model_not_found");
        error.detail.param = Some("model".to_string());
        error
    }

    /// 404: anything else missing.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    /// 405: the endpoint exists with another method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method not allowed for this endpoint",
        )
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body is over the limit of {limit} bytes"),
        )
        .with_code("payload_too_large")
    }

    /// 429: the queue is full; try again shortly.
    pub fn overloaded(queue: usize) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("the server is busy ({queue} requests waiting); retry after a second"),
        )
        .with_code("queue_full");
        error.retry_after = Some(1);
        error
    }

    /// 503: the engine has stopped.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut error = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message);
        error.retry_after = Some(1);
        error
    }

    /// 500: the model failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// Any status, with the OpenAI error type that goes with it.
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500.. => "server_error",
            _ => "invalid_request_error",
        };
        Self::new(status, kind, message)
    }
}

/// Largest framework error text carried over into the message.
const MAX_REJECTION_TEXT: usize = 4096;

/// Middleware: every error response that is not already JSON — the framework's own
/// rejections of a path (`DELETE /v1/adapters/%ff`), a query, a JSON body, a body limit, a
/// method — gets the OpenAI error body with the same status and headers. Handlers' own errors
/// are [`ApiError`]s already and pass through. A 5xx keeps its details in the log only.
pub async fn openai_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    let message = if status.is_server_error() {
        tracing::error!(status = status.as_u16(), %text, "server error");
        reason
    } else if text.is_empty() {
        reason
    } else {
        text
    };
    let mut rewritten = ApiError::from_status(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.detail.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after;
        let mut response = (self.status, Json(ErrorBody { error: self.detail })).into_response();
        if let Some(seconds) = retry_after {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{DefaultBodyLimit, Path, Query};
    use axum::routing::{delete, post};
    use axum::Router;
    use serde_json::Value;

    #[derive(serde::Deserialize)]
    struct Page {
        #[expect(dead_code, reason = "only its parsing is under test")]
        limit: u32,
    }

    /// A router using the framework's own extractors, whose rejections are plain text.
    fn router() -> Router {
        Router::new()
            .route("/items/{id}", delete(|Path(id): Path<String>| async { id }))
            .route(
                "/page",
                axum::routing::get(|Query(_): Query<Page>| async { "ok" }),
            )
            .route("/json", post(|Json(v): Json<Value>| async move { Json(v) }))
            .layer(DefaultBodyLimit::max(16))
            .layer(axum::middleware::from_fn(openai_errors))
    }

    fn call(method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
        let request = ureq::request(method, url).set("content-type", "application/json");
        let result = match body {
            Some(b) => request.send_string(b),
            None => request.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        let status = response.status();
        (status, response.into_json().unwrap_or(Value::Null))
    }

    #[test]
    fn every_framework_rejection_has_the_openai_shape() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        runtime.spawn(async move { axum::serve(listener, router()).await });
        let cases = [
            ("DELETE", "/items/%ff", None, 400),
            ("GET", "/page?limit=many", None, 400),
            ("POST", "/json", Some("{not json"), 400),
            ("POST", "/json", Some("[1, 2, 3, 4, 5, 6, 7, 8, 9]"), 413),
            ("GET", "/json", None, 405),
            ("GET", "/nowhere", None, 404),
        ];
        for (method, path, body, status) in cases {
            let (got, response) = call(method, &format!("{url}{path}"), body);
            assert_eq!(got, status, "{method} {path}: {response}");
            let error = &response["error"];
            assert!(
                error["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{method} {path}: {response}"
            );
            assert!(error["type"].is_string(), "{method} {path}: {response}");
            assert!(error.get("param").is_some() && error.get("code").is_some());
        }
        // Success passes through untouched.
        let (status, response) = call("POST", &format!("{url}/json"), Some("[1]"));
        assert_eq!((status, response), (200, serde_json::json!([1])));
    }
}
