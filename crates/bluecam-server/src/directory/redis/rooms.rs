//! Rooms in Redis ([`RedisStore`]): a cluster without PostgreSQL keeps them here, and one
//! with PostgreSQL mirrors them here for the directory scripts.

use super::*;

/// Rooms in Redis (see the module doc for the keys).
#[derive(Clone, Debug)]
pub struct RedisStore {
    pub(super) broker: Arc<RedisBroker>,
}

fn store_err(e: impl Into<crate::persist::store::BackendError>) -> StoreError {
    StoreError::Redis(e.into())
}

/// Records a removal (`Store::remove_identity`): KEYS the room's record and its removals,
/// ARGV the identity and the time. 1 when the room is there.
const REMOVE_IDENTITY: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local raw = redis.call('GET', KEYS[2])
local removed = {}
if raw then removed = cjson.decode(raw) end
local at = tonumber(ARGV[2])
if (tonumber(removed[ARGV[1]]) or 0) < at then removed[ARGV[1]] = at end
redis.call('SET', KEYS[2], cjson.encode(removed))
return 1
"#;

/// A room's removals (`Room::removed`): a string, the JSON object identity → Unix seconds, in
/// the room's slot, beside its record (a string, so one `MGET` reads both) (never in it: a `PATCH` writing the record cannot lose one). Not a
/// directory key: no directory script reads it. A delete removes it after the room (and a
/// removal writes it only while the room is there, [`REMOVE_IDENTITY`]); one left behind
/// (that second step failed) is harmless: a later room of the id refuses only tokens issued
/// before it anyway.
fn removed_key(room: &RoomId) -> String {
    format!("bc:{{{room}}}:removed")
}

impl RedisStore {
    async fn rooms_by_id(&self, ids: Vec<String>) -> Result<Vec<Room>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One GET per room (not MGET: the rooms are in different slots of a cluster).
        let pipe = self.broker.client.pipeline();
        for id in &ids {
            let _: () = pipe
                .get(room_key(&RoomId::new(id.as_str()), "room").as_str())
                .await
                .map_err(store_err)?;
        }
        let values: Vec<Option<String>> = pipe.all().await.map_err(store_err)?;
        Ok(values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect())
    }
}

impl RedisStore {
    /// Deletes a room (`Directory::delete_room`) and takes it off the room list.
    async fn delete(
        &self,
        id: RoomId,
        reason: RoomClosedReason,
        only_if_empty: bool,
    ) -> Result<bool, StoreError> {
        let b = &self.broker;
        let deleted = b
            .dir
            .delete_room(&id, reason, &b.node, only_if_empty)
            .await
            .map_err(store_err)?;
        if deleted {
            let _: i64 = b
                .cmd()
                .zrem("bc:rooms", id.as_str())
                .await
                .map_err(store_err)?;
            let _: i64 = b.cmd().del(removed_key(&id)).await.map_err(store_err)?;
        }
        Ok(deleted)
    }
}

impl Store for RedisStore {
    fn create_room(&self, room: Room) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&room).map_err(store_err)?;
            let created = self
                .broker
                .dir
                .create_room(&room.id, &json)
                .await
                .map_err(store_err)?;
            if !created {
                return Err(StoreError::Exists);
            }
            let _: i64 = self
                .broker
                .cmd()
                .zadd(
                    "bc:rooms",
                    None,
                    None,
                    false,
                    false,
                    (room.created_at as f64, room.id.as_str()),
                )
                .await
                .map_err(store_err)?;
            Ok(())
        })
    }

    fn update_room(&self, room: Room) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&room).map_err(store_err)?;
            // Only over a room that is there (XX): never brings a deleted one back.
            let set: Option<String> = self
                .broker
                .cmd()
                .set(
                    room_key(&room.id, "room").as_str(),
                    json,
                    None,
                    Some(fred::types::SetOptions::XX),
                    false,
                )
                .await
                .map_err(store_err)?;
            Ok(set.is_some())
        })
    }

    fn room(&self, id: RoomId) -> BoxFuture<'_, Result<Option<Room>, StoreError>> {
        Box::pin(async move {
            // One command: the record and its removals (one slot). (A pipeline of a GET and an
            // HGETALL cost a cluster's joins about 8 %: BENCHMARKS.md.)
            let keys = vec![room_key(&id, "room"), removed_key(&id)];
            let mut both: Vec<Option<String>> =
                self.broker.cmd().mget(keys).await.map_err(store_err)?;
            let removed = both.pop().flatten();
            let Some(room) = both.pop().flatten() else {
                return Ok(None);
            };
            let mut room: Room = serde_json::from_str(&room).map_err(store_err)?;
            if let Some(removed) = removed {
                room.removed = serde_json::from_str(&removed).map_err(store_err)?;
            }
            Ok(Some(room))
        })
    }

    fn remove_identity(
        &self,
        id: RoomId,
        identity: Identity,
        at: u64,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            // In one step: only for a room that is there (never a removal left behind a
            // deletion), and a later removal never lowers an identity's time (two removals at
            // once from nodes whose clocks differ).
            let keys = vec![room_key(&id, "room"), removed_key(&id)];
            let args = vec![identity.to_string(), at.to_string()];
            let done: i64 = self
                .broker
                .cmd()
                .eval(REMOVE_IDENTITY, keys, args)
                .await
                .map_err(store_err)?;
            Ok(done == 1)
        })
    }

    fn rooms(&self, member: Option<Identity>) -> BoxFuture<'_, Result<Vec<Room>, StoreError>> {
        Box::pin(async move {
            let ids: Vec<String> = self
                .broker
                .cmd()
                .zrange("bc:rooms", 0, -1, None, false, None, false)
                .await
                .map_err(store_err)?;
            let mut rooms = self.rooms_by_id(ids).await?;
            if let Some(member) = member {
                crate::persist::store::retain_involving(&mut rooms, &member);
            }
            Ok(rooms)
        })
    }

    fn delete_room(&self, id: RoomId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { self.delete(id, RoomClosedReason::Deleted, false).await })
    }

    fn delete_empty_room(&self, id: RoomId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { self.delete(id, RoomClosedReason::Expired, true).await })
    }

    fn touch_room(&self, id: RoomId, at: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.broker
                .cmd()
                .set::<(), _, _>(
                    room_key(&id, "active").as_str(),
                    at,
                    None,
                    Some(SetOptions::XX),
                    false,
                )
                .await
                .map_err(store_err)
        })
    }

    fn expired_rooms(&self, now: u64) -> BoxFuture<'_, Result<Vec<RoomId>, StoreError>> {
        Box::pin(async move {
            let rooms = self.rooms(None).await?;
            let rooms: Vec<Room> = rooms
                .into_iter()
                .filter(|r| r.empty_timeout_secs.is_some())
                .collect();
            if rooms.is_empty() {
                return Ok(Vec::new());
            }
            let pipe = self.broker.client.pipeline();
            for r in &rooms {
                let _: () = pipe
                    .get(room_key(&r.id, "active").as_str())
                    .await
                    .map_err(store_err)?;
                let _: () = pipe
                    .hlen(room_key(&r.id, "nodes").as_str())
                    .await
                    .map_err(store_err)?;
            }
            let answers: Vec<Value> = pipe.all().await.map_err(store_err)?;
            let mut out = Vec::new();
            for (r, pair) in rooms.into_iter().zip(answers.chunks(2)) {
                let active = pair.first().and_then(Value::as_u64).unwrap_or(r.created_at);
                let peers = pair.get(1).and_then(Value::as_u64).unwrap_or(0);
                if peers == 0
                    && r.empty_timeout_secs
                        .is_some_and(|t| active.saturating_add(t) <= now)
                {
                    out.push(r.id);
                }
            }
            Ok(out)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.broker.check().await.map_err(store_err) })
    }

    fn recently_deleted(&self, id: &RoomId) -> BoxFuture<'_, Result<bool, StoreError>> {
        let key = room_key(id, "deleted");
        Box::pin(async move {
            let n: i64 = self.broker.cmd().exists(key).await.map_err(store_err)?;
            Ok(n > 0)
        })
    }
}
