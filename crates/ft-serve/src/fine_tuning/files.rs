//! `/v1/files`: uploads (multipart, as the SDK sends them), listing, retrieval, deletion and
//! content. Bytes go to the blob store under `files/{id}`, streamed to a temp file as they
//! arrive and renamed into place when complete; the client's filename is only ever echoed
//! back, never used as a path, and contents are never logged.

use axum::body::Body;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ft_store::Blobs;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{objects, service, store_error, ListQuery};
use crate::error::ApiError;
use crate::server::AppState;

/// Purposes OpenAI's files API takes; ft trains on `fine-tune` files and stores the others.
const PURPOSES: &[&str] = &[
    "fine-tune",
    "assistants",
    "batch",
    "vision",
    "user_data",
    "evals",
];

pub(super) fn routes(max_upload_bytes: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/files",
            get(list)
                .post(upload)
                // The upload's own limit, above the JSON endpoints' one.
                .layer(DefaultBodyLimit::max(max_upload_bytes)),
        )
        .route("/v1/files/{id}", get(retrieve).delete(remove))
        .route("/v1/files/{id}/content", get(content))
}

pub(crate) fn blob_key(id: &str) -> String {
    format!("files/{id}")
}

fn multipart_error(error: &MultipartError, limit: usize) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::bad_body(format!("invalid multipart upload: {}", error.body_text()))
    }
}

async fn upload(
    State(state): State<AppState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let service = service(&state)?;
    let limit = service.config.max_upload_bytes;
    let mut multipart = multipart.map_err(|e| {
        ApiError::bad_body(format!(
            "POST /v1/files takes multipart/form-data with `file` and `purpose`: {}",
            e.body_text()
        ))
    })?;
    let id = ft_store::new_id("file-");
    let mut purpose: Option<String> = None;
    let mut stored: Option<(String, u64, String)> = None;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, limit))?
    {
        match field.name() {
            Some("purpose") => {
                let text = field.text().await.map_err(|e| multipart_error(&e, limit))?;
                purpose = Some(text.trim().to_string());
            }
            Some("file") => {
                let filename = field
                    .file_name()
                    .map_or_else(|| "upload.jsonl".to_string(), str::to_string);
                let mut writer = service
                    .store
                    .blobs()
                    .create(&blob_key(&id))
                    .map_err(store_error)?;
                let mut digest = Sha256::new();
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| multipart_error(&e, limit))?
                {
                    if writer.written + chunk.len() as u64 > limit as u64 {
                        return Err(ApiError::too_large(limit));
                    }
                    digest.update(&chunk);
                    writer.write(&chunk).map_err(store_error)?;
                }
                let bytes = writer.written;
                writer.commit().map_err(store_error)?;
                stored = Some((filename, bytes, format!("{:x}", digest.finalize())));
            }
            // The SDK sends nothing else; other fields are ignored as OpenAI does.
            _ => {}
        }
    }
    let Some((filename, bytes, sha256)) = stored else {
        return Err(ApiError::invalid("file", "the upload has no `file` part"));
    };
    let purpose = match purpose {
        Some(p) if PURPOSES.contains(&p.as_str()) => p,
        other => {
            let _ = service.store.blobs().delete(&blob_key(&id));
            return Err(ApiError::invalid(
                "purpose",
                format!(
                    "`purpose` must be one of {}, got {}",
                    PURPOSES.join(", "),
                    other.map_or_else(|| "nothing".to_string(), |p| format!("`{p}`"))
                ),
            ));
        }
    };
    // Echoed, never a path; kept short and printable.
    let filename: String = filename
        .chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect();
    let object = json!({
        "object": "file",
        "id": id,
        "bytes": bytes,
        "created_at": ft_store::unix_now(),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": null,
        "expires_at": null,
    });
    service
        .store
        .insert_file(&object, &sha256)
        .map_err(store_error)?;
    tracing::info!(file = %id, bytes, %purpose, "file uploaded");
    Ok(Json(object))
}

/// A stored file object, or OpenAI's 404.
pub(super) fn file_object(service: &super::FineTuning, id: &str) -> Result<Value, ApiError> {
    service
        .store
        .file(id)
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no file `{id}`")))
}

async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let service = service(&state)?;
    let page = service
        .store
        .list_files(query.purpose.as_deref(), &query.page(10_000)?)
        .map_err(store_error)?;
    Ok(Json(objects::list(page, true)))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let service = service(&state)?;
    Ok(Json(file_object(&service, &id)?))
}

async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let service = service(&state)?;
    file_object(&service, &id)?;
    service.store.delete_file(&id).map_err(store_error)?;
    service
        .store
        .blobs()
        .delete(&blob_key(&id))
        .map_err(store_error)?;
    Ok(Json(json!({"object": "file", "id": id, "deleted": true})))
}

async fn content(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let service = service(&state)?;
    file_object(&service, &id)?;
    let path = service
        .store
        .blobs()
        .path(&blob_key(&id))
        .map_err(store_error)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(format!("file `{id}`: {e}")))?;
    let body = Body::from_stream(read_chunks(file));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// The file's bytes as a stream of 64 KiB chunks, ending after the first error.
fn read_chunks(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0u8; 64 << 10];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(buffer.into()), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}
