//! Containers started by `skiff run` or by the serving daemon: one row
//! each, from creation until `skiff rm` (or exit, with `--rm`).

use rusqlite::{params, OptionalExtension, Row};

use crate::{to_json, State, StateError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        }
    }
    fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "created" => Status::Created,
            "running" => Status::Running,
            "exited" => Status::Exited,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub command: Vec<String>,
    pub created_ms: i64,
    pub status: Status,
    pub pid: Option<i32>,
    pub monitor_pid: Option<i32>,
    pub exit_code: Option<i32>,
    pub finished_ms: Option<i64>,
    pub ip: Option<String>,
    pub ports: Vec<skiff_core::PortMapping>,
    pub auto_remove: bool,
    pub runtime: String,
    /// Who started it: `None` for `skiff run`, [`OWNER_SERVE`] for an instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Where its output is logged: `None` for the default, the container's
    /// own directory (gone with it); a service instance's outlives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
}

/// The owner of the serving daemon's instances.
pub const OWNER_SERVE: &str = "serve";

impl ContainerRecord {
    /// A container about to be prepared, created now by this process,
    /// which counts as its monitor until the real one takes over: a Created
    /// record whose creator is alive is starting, not abandoned.
    pub fn created(id: &str, name: &str, image: &str, image_id: &str, runtime: &str) -> Self {
        ContainerRecord {
            id: id.to_string(),
            name: name.to_string(),
            image: image.to_string(),
            image_id: image_id.to_string(),
            command: Vec::new(),
            created_ms: crate::now_ms(),
            status: Status::Created,
            pid: None,
            monitor_pid: Some(std::process::id() as i32),
            exit_code: None,
            finished_ms: None,
            ip: None,
            ports: Vec::new(),
            auto_remove: false,
            runtime: runtime.to_string(),
            owner: None,
            log_path: None,
        }
    }
}

impl State {
    /// Inserts a new container; its name must be free.
    pub fn insert_container(&self, c: &ContainerRecord) -> Result<(), StateError> {
        let res = self.conn.execute(
            "INSERT INTO containers (id, name, image, image_id, command, created_ms, status, pid,
                monitor_pid, exit_code, finished_ms, ip, ports, auto_remove, runtime, owner,
                log_path)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                c.id,
                c.name,
                c.image,
                c.image_id,
                to_json(&c.command),
                c.created_ms,
                c.status.as_str(),
                c.pid,
                c.monitor_pid,
                c.exit_code,
                c.finished_ms,
                c.ip,
                to_json(&c.ports),
                c.auto_remove,
                c.runtime,
                c.owner,
                c.log_path,
            ],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StateError::NameInUse(c.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// What is known once the bundle is prepared: the container's address
    /// on the bridge, if any, and the command it will really run (the
    /// image's entrypoint and cmd merged with the flags).
    pub fn set_prepared(
        &self,
        id: &str,
        ip: Option<&str>,
        command: &[String],
    ) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE containers SET ip = ?2, command = ?3 WHERE id = ?1",
            params![id, ip, to_json(&command)],
        )?;
        Ok(())
    }

    /// [`Self::set_prepared`] and [`Self::set_running`] in one write, for
    /// a monitor that prepared the container itself: one transaction (and
    /// its pages in the write-ahead log) fewer on the way to a running
    /// container.
    pub fn set_prepared_running(
        &self,
        id: &str,
        ip: Option<&str>,
        command: &[String],
        pid: i32,
        monitor_pid: i32,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE containers SET ip = ?2, command = ?3, status = 'running', pid = ?4,
                monitor_pid = ?5 WHERE id = ?1",
            params![id, ip, to_json(&command), pid, monitor_pid],
        )?;
        Ok(())
    }

    pub fn set_running(&self, id: &str, pid: i32, monitor_pid: i32) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE containers SET status = 'running', pid = ?2, monitor_pid = ?3 WHERE id = ?1",
            params![id, pid, monitor_pid],
        )?;
        Ok(())
    }

    pub fn set_exited(&self, id: &str, exit_code: i32, finished_ms: i64) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE containers SET status = 'exited', pid = NULL, monitor_pid = NULL,
                exit_code = ?2, finished_ms = ?3 WHERE id = ?1",
            params![id, exit_code, finished_ms],
        )?;
        Ok(())
    }

    pub fn remove_container(&self, id: &str) -> Result<bool, StateError> {
        Ok(self
            .conn
            .execute("DELETE FROM containers WHERE id = ?1", params![id])?
            > 0)
    }

    /// By exact name, exact id, or an unambiguous id prefix (as Docker resolves them).
    pub fn find_container(&self, key: &str) -> Result<Option<ContainerRecord>, StateError> {
        let by_name = self
            .conn
            .query_row(
                "SELECT * FROM containers WHERE name = ?1 OR id = ?1",
                params![key],
                |r| Ok(read_row(r)),
            )
            .optional()?;
        if let Some(found) = by_name {
            return found.map(Some);
        }
        if key.len() < 3 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT * FROM containers WHERE substr(id, 1, ?2) = ?1 LIMIT 2")?;
        let rows: Vec<_> = stmt
            .query_map(params![key, key.len() as i64], |r| Ok(read_row(r)))?
            .collect::<Result<_, _>>()?;
        match rows.len() {
            1 => rows.into_iter().next().transpose(),
            _ => Ok(None),
        }
    }

    pub fn list_containers(&self) -> Result<Vec<ContainerRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT * FROM containers ORDER BY created_ms DESC")?;
        let rows: Vec<_> = stmt
            .query_map([], |r| Ok(read_row(r)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter().collect()
    }

    /// The containers `owner` started, oldest first.
    pub fn list_containers_owned_by(
        &self,
        owner: &str,
    ) -> Result<Vec<ContainerRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT * FROM containers WHERE owner = ?1 ORDER BY created_ms")?;
        let rows: Vec<_> = stmt
            .query_map(params![owner], |r| Ok(read_row(r)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter().collect()
    }

    /// Image ids that some container (running or not) was made from:
    /// those images must not be removed.
    pub fn image_ids_in_use(&self) -> Result<Vec<String>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT image_id FROM containers")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }
}

fn read_row(r: &Row<'_>) -> Result<ContainerRecord, StateError> {
    let id: String = r.get("id")?;
    let corrupt = |field, why: String| StateError::Corrupt {
        id: id.clone(),
        field,
        why,
    };
    let status: String = r.get("status")?;
    let command: String = r.get("command")?;
    let ports: String = r.get("ports")?;
    Ok(ContainerRecord {
        name: r.get("name")?,
        image: r.get("image")?,
        image_id: r.get("image_id")?,
        command: serde_json::from_str(&command).map_err(|e| corrupt("command", e.to_string()))?,
        created_ms: r.get("created_ms")?,
        status: Status::parse(&status).ok_or_else(|| corrupt("status", status.clone()))?,
        pid: r.get("pid")?,
        monitor_pid: r.get("monitor_pid")?,
        exit_code: r.get("exit_code")?,
        finished_ms: r.get("finished_ms")?,
        ip: r.get("ip")?,
        ports: serde_json::from_str(&ports).map_err(|e| corrupt("ports", e.to_string()))?,
        auto_remove: r.get("auto_remove")?,
        runtime: r.get("runtime")?,
        owner: r.get("owner")?,
        log_path: r.get("log_path")?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: name.into(),
            image: "docker.io/library/busybox:latest".into(),
            image_id: "sha256:abc".into(),
            command: vec!["sh".into()],
            created_ms: 1,
            status: Status::Created,
            pid: None,
            monitor_pid: None,
            exit_code: None,
            finished_ms: None,
            ip: None,
            ports: vec![skiff_core::parse_port_mapping("8080:80").unwrap()],
            auto_remove: false,
            runtime: "crun".into(),
            owner: None,
            log_path: None,
        }
    }

    /// Several CLIs opening a database that does not exist yet (the first
    /// `skiff` commands on a new root) must all get it, none "locked".
    #[test]
    fn concurrent_first_opens_all_succeed() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            let threads: Vec<_> = (0..8)
                .map(|i| {
                    let path = path.clone();
                    std::thread::spawn(move || {
                        let s = State::open(&path)?;
                        s.insert_container(&record(&format!("{i:064}"), &format!("c{i}")))
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap().unwrap();
            }
            assert_eq!(
                State::open(&path).unwrap().list_containers().unwrap().len(),
                8
            );
        }
    }

    #[test]
    fn lifecycle_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = State::open(&path).unwrap();
        s.insert_container(&record("abcdef0123", "web")).unwrap();
        s.insert_container(&record("abc9990000", "db")).unwrap();
        assert!(matches!(
            s.insert_container(&record("ffff", "web")),
            Err(StateError::NameInUse(_))
        ));
        assert_eq!(s.find_container("web").unwrap().unwrap().id, "abcdef0123");
        assert_eq!(s.find_container("abcd").unwrap().unwrap().name, "web");
        assert!(
            s.find_container("abc").unwrap().is_none(),
            "ambiguous prefix"
        );
        assert!(s.find_container("nope").unwrap().is_none());

        s.set_prepared("abcdef0123", Some("10.89.0.2"), &["httpd".into()])
            .unwrap();
        s.set_running("abcdef0123", 42, 41).unwrap();
        let c = s.find_container("web").unwrap().unwrap();
        assert_eq!(
            (c.status, c.pid, c.ip.as_deref()),
            (Status::Running, Some(42), Some("10.89.0.2"))
        );
        assert_eq!(c.ports[0].container_port, 80);
        assert_eq!(c.command, ["httpd"]);
        // The same in one write.
        s.set_prepared_running("abc9990000", Some("10.89.0.3"), &["pg".into()], 43, 41)
            .unwrap();
        let c = s.find_container("db").unwrap().unwrap();
        assert_eq!(
            (c.status, c.pid, c.monitor_pid, c.ip.as_deref()),
            (Status::Running, Some(43), Some(41), Some("10.89.0.3"))
        );
        assert_eq!(c.command, ["pg"]);

        s.set_exited("abcdef0123", 137, 5).unwrap();
        let c = s.find_container("web").unwrap().unwrap();
        assert_eq!(
            (c.status, c.exit_code, c.pid),
            (Status::Exited, Some(137), None)
        );

        // Only the daemon's instances carry an owner.
        let mut inst = record("0123456789", "hello-00001-01234");
        inst.owner = Some(OWNER_SERVE.into());
        inst.log_path = Some("/r/logs/hello/hello-00001-01234.log".into());
        s.insert_container(&inst).unwrap();
        let owned = s.list_containers_owned_by(OWNER_SERVE).unwrap();
        assert_eq!(owned.len(), 1);
        assert_eq!(owned[0].owner.as_deref(), Some(OWNER_SERVE));
        assert_eq!(owned[0].log_path, inst.log_path);
        let web = s.find_container("web").unwrap().unwrap();
        assert_eq!((web.owner, web.log_path), (None, None));
        assert!(s.remove_container("0123456789").unwrap());

        // Reopening keeps the data and does not re-run migrations.
        drop(s);
        let s = State::open(&path).unwrap();
        assert_eq!(s.list_containers().unwrap().len(), 2);
        assert_eq!(
            s.image_ids_in_use().unwrap(),
            vec!["sha256:abc".to_string()]
        );
        assert!(s.remove_container("abcdef0123").unwrap());
        assert!(!s.remove_container("abcdef0123").unwrap());
    }
}
