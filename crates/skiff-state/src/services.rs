//! Services, their immutable revisions and their traffic splits: what the
//! serving daemon must find again after a crash. Each method is one
//! transaction; the ones that read before writing take the write lock
//! first (IMMEDIATE) so two writers never decide from the same snapshot.

use rusqlite::{params, OptionalExtension, Row, Transaction, TransactionBehavior};
use skiff_core::{
    validate_traffic, RevisionName, RevisionStatus, ServiceName, ServiceSpec, TrafficTarget,
};

use crate::{now_ms, State, StateError};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceRecord {
    pub name: ServiceName,
    pub created_ms: i64,
    /// Grows with every new revision, status change and traffic change.
    pub generation: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RevisionRecord {
    pub name: RevisionName,
    pub spec: ServiceSpec,
    pub created_ms: i64,
    pub status: RevisionStatus,
    pub status_reason: Option<String>,
}

impl State {
    /// Freezes `spec` as the service's next revision, creating the service
    /// on its first deploy. Nothing is written if the spec is invalid.
    pub fn create_revision(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
    ) -> Result<RevisionName, StateError> {
        spec.validate()?;
        let json = serde_json::to_string(spec).map_err(|e| corrupt_spec(service.as_str(), e))?;
        let now = now_ms();
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO services (name, created_ms, generation) VALUES (?1, ?2, 1)
             ON CONFLICT (name) DO UPDATE SET generation = generation + 1",
            params![service.as_str(), now],
        )?;
        let last: i64 = tx.query_row(
            "SELECT COALESCE(MAX(number), 0) FROM revisions WHERE service = ?1",
            params![service.as_str()],
            |r| r.get(0),
        )?;
        let number = u32::try_from(last + 1).map_err(|_| StateError::CorruptService {
            what: "service",
            key: service.to_string(),
            field: "number",
            why: format!("revision number {last} cannot grow further"),
        })?;
        let name = service.revision(number);
        tx.execute(
            "INSERT INTO revisions (name, service, number, spec, created_ms, status)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending')",
            params![name.to_string(), service.as_str(), number, json, now],
        )?;
        tx.commit()?;
        Ok(name)
    }

    pub fn get_service(&self, service: &ServiceName) -> Result<Option<ServiceRecord>, StateError> {
        self.conn
            .query_row(
                "SELECT * FROM services WHERE name = ?1",
                params![service.as_str()],
                |r| Ok(read_service(r)),
            )
            .optional()?
            .transpose()
    }

    /// All services, by name.
    pub fn list_services(&self) -> Result<Vec<ServiceRecord>, StateError> {
        let mut stmt = self.conn.prepare("SELECT * FROM services ORDER BY name")?;
        let rows: Vec<_> = stmt
            .query_map([], |r| Ok(read_service(r)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter().collect()
    }

    /// A service's revisions, newest first; empty if there is no such service.
    pub fn list_revisions(&self, service: &ServiceName) -> Result<Vec<RevisionRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT * FROM revisions WHERE service = ?1 ORDER BY number DESC")?;
        let rows: Vec<_> = stmt
            .query_map(params![service.as_str()], |r| Ok(read_revision(r)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter().collect()
    }

    pub fn get_revision(&self, rev: &RevisionName) -> Result<Option<RevisionRecord>, StateError> {
        self.conn
            .query_row(
                "SELECT * FROM revisions WHERE name = ?1",
                params![rev.to_string()],
                |r| Ok(read_revision(r)),
            )
            .optional()?
            .transpose()
    }

    /// Records what the control layer learned about a revision (ready, or
    /// failed and why). Only the status of a revision ever changes.
    pub fn set_revision_status(
        &self,
        rev: &RevisionName,
        status: RevisionStatus,
        reason: Option<&str>,
    ) -> Result<(), StateError> {
        let tx = self.write_tx()?;
        let n = tx.execute(
            "UPDATE revisions SET status = ?2, status_reason = ?3 WHERE name = ?1",
            params![rev.to_string(), status.as_str(), reason],
        )?;
        if n == 0 {
            return Err(StateError::NoSuchRevision(rev.to_string()));
        }
        bump_generation(&tx, rev.service())?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces the service's whole split, or changes nothing: the split
    /// must be valid against the service's revisions as they are inside
    /// this transaction, and no failed revision may get a share.
    pub fn set_traffic(
        &self,
        service: &ServiceName,
        targets: &[TrafficTarget],
    ) -> Result<(), StateError> {
        let tx = self.write_tx()?;
        let known: Vec<(RevisionName, String, Option<String>)> = {
            let mut stmt =
                tx.prepare("SELECT name, status, status_reason FROM revisions WHERE service = ?1")?;
            let rows = stmt
                .query_map(params![service.as_str()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(name, status, reason)| {
                    let rev = name.parse().map_err(|e: skiff_core::SpecError| {
                        corrupt_revision(&name, "name", e.to_string())
                    })?;
                    Ok((rev, status, reason))
                })
                .collect::<Result<_, StateError>>()?
        };
        if known.is_empty() {
            return Err(StateError::NoSuchService(service.to_string()));
        }
        let names: Vec<RevisionName> = known.iter().map(|k| k.0.clone()).collect();
        validate_traffic(targets, &names)?;
        for t in targets.iter().filter(|t| t.percent > 0) {
            if let Some((_, _, reason)) = known
                .iter()
                .find(|(n, status, _)| *n == t.revision && status == "failed")
            {
                return Err(StateError::RevisionFailed {
                    revision: t.revision.to_string(),
                    reason: reason
                        .clone()
                        .unwrap_or_else(|| "no reason recorded".into()),
                });
            }
        }
        tx.execute(
            "DELETE FROM traffic WHERE service = ?1",
            params![service.as_str()],
        )?;
        for t in targets {
            tx.execute(
                "INSERT INTO traffic (service, revision, percent, tag) VALUES (?1, ?2, ?3, ?4)",
                params![service.as_str(), t.revision.to_string(), t.percent, t.tag],
            )?;
        }
        bump_generation(&tx, service)?;
        tx.commit()?;
        Ok(())
    }

    /// The service's split, largest share first; empty before any was set.
    pub fn traffic(&self, service: &ServiceName) -> Result<Vec<TrafficTarget>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT t.revision, t.percent, t.tag FROM traffic t
             JOIN revisions r ON r.name = t.revision
             WHERE t.service = ?1 ORDER BY t.percent DESC, r.number DESC",
        )?;
        let rows = stmt
            .query_map(params![service.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, u8>(1)?, r.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(rev, percent, tag)| {
                Ok(TrafficTarget {
                    revision: rev.parse().map_err(|e: skiff_core::SpecError| {
                        corrupt_revision(&rev, "name", e.to_string())
                    })?,
                    percent,
                    tag,
                })
            })
            .collect()
    }

    /// Deletes the service with its revisions and traffic; false if there
    /// was no such service. Stopping its instances is the caller's job.
    pub fn delete_service(&self, service: &ServiceName) -> Result<bool, StateError> {
        Ok(self.conn.execute(
            "DELETE FROM services WHERE name = ?1",
            params![service.as_str()],
        )? > 0)
    }

    /// `BEGIN IMMEDIATE` waits (busy timeout) for the write lock up front;
    /// a deferred transaction that read first would fail at once with
    /// SQLITE_BUSY when upgrading, since waiting could deadlock.
    fn write_tx(&self) -> Result<Transaction<'_>, StateError> {
        Ok(Transaction::new_unchecked(
            &self.conn,
            TransactionBehavior::Immediate,
        )?)
    }
}

fn bump_generation(tx: &Transaction<'_>, service: &ServiceName) -> rusqlite::Result<usize> {
    tx.execute(
        "UPDATE services SET generation = generation + 1 WHERE name = ?1",
        params![service.as_str()],
    )
}

fn corrupt_revision(key: &str, field: &'static str, why: String) -> StateError {
    StateError::CorruptService {
        what: "revision",
        key: key.to_string(),
        field,
        why,
    }
}

fn corrupt_spec(key: &str, e: serde_json::Error) -> StateError {
    corrupt_revision(key, "spec", e.to_string())
}

fn read_service(r: &Row<'_>) -> Result<ServiceRecord, StateError> {
    let name: String = r.get("name")?;
    Ok(ServiceRecord {
        name: ServiceName::new(&name).map_err(|e| StateError::CorruptService {
            what: "service",
            key: name.clone(),
            field: "name",
            why: e.to_string(),
        })?,
        created_ms: r.get("created_ms")?,
        generation: r.get("generation")?,
    })
}

fn read_revision(r: &Row<'_>) -> Result<RevisionRecord, StateError> {
    let name: String = r.get("name")?;
    let spec: String = r.get("spec")?;
    let status: String = r.get("status")?;
    Ok(RevisionRecord {
        spec: serde_json::from_str(&spec).map_err(|e| corrupt_spec(&name, e))?,
        status: status
            .parse()
            .map_err(|_| corrupt_revision(&name, "status", status.clone()))?,
        status_reason: r.get("status_reason")?,
        created_ms: r.get("created_ms")?,
        name: name
            .parse()
            .map_err(|e: skiff_core::SpecError| corrupt_revision(&name, "name", e.to_string()))?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn svc(s: &str) -> ServiceName {
        ServiceName::new(s).unwrap()
    }

    fn spec(image: &str) -> ServiceSpec {
        ServiceSpec {
            image: image.into(),
            ..ServiceSpec::default()
        }
    }

    fn split(parts: &[(&RevisionName, u8, Option<&str>)]) -> Vec<TrafficTarget> {
        parts
            .iter()
            .map(|(rev, percent, tag)| TrafficTarget {
                revision: (*rev).clone(),
                percent: *percent,
                tag: tag.map(String::from),
            })
            .collect()
    }

    fn open() -> (tempfile::TempDir, State) {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(&dir.path().join("state.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn revisions_are_numbered_per_service() {
        let (_dir, s) = open();
        let web = svc("web");
        let r1 = s.create_revision(&web, &spec("busybox:1")).unwrap();
        let r2 = s.create_revision(&web, &spec("busybox:2")).unwrap();
        let a1 = s.create_revision(&svc("api"), &spec("busybox")).unwrap();
        assert_eq!(r1.to_string(), "web-00001");
        assert_eq!(r2.to_string(), "web-00002");
        assert_eq!(a1.to_string(), "api-00001");

        let revs = s.list_revisions(&web).unwrap();
        assert_eq!(
            revs.iter().map(|r| r.name.number()).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(revs[0].spec.image, "busybox:2");
        assert_eq!(revs[0].status, RevisionStatus::Pending);
        let names: Vec<_> = s
            .list_services()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, [svc("api"), web.clone()]);
        assert_eq!(s.get_service(&web).unwrap().unwrap().generation, 2);
        assert!(s.get_service(&svc("nope")).unwrap().is_none());
        assert!(s.get_revision(&web.revision(3)).unwrap().is_none());

        // An invalid spec creates neither a service nor a revision.
        let bad = ServiceSpec {
            port: 0,
            ..spec("busybox")
        };
        let e = s.create_revision(&svc("bad"), &bad).unwrap_err();
        assert!(e.to_string().starts_with("port:"), "{e}");
        assert!(s.get_service(&svc("bad")).unwrap().is_none());
    }

    #[test]
    fn status_and_traffic() {
        let (_dir, s) = open();
        let web = svc("web");
        let r1 = s.create_revision(&web, &spec("busybox:1")).unwrap();
        let r2 = s.create_revision(&web, &spec("busybox:2")).unwrap();
        assert!(s.traffic(&web).unwrap().is_empty());

        s.set_revision_status(&r1, RevisionStatus::Ready, None)
            .unwrap();
        s.set_revision_status(&r2, RevisionStatus::Failed, Some("exited with code 1"))
            .unwrap();
        let got = s.get_revision(&r2).unwrap().unwrap();
        assert_eq!(
            (got.status, got.status_reason.as_deref()),
            (RevisionStatus::Failed, Some("exited with code 1"))
        );
        assert!(matches!(
            s.set_revision_status(&web.revision(9), RevisionStatus::Ready, None),
            Err(StateError::NoSuchRevision(_))
        ));

        let old = split(&[(&r1, 100, None), (&r2, 0, Some("next"))]);
        s.set_traffic(&web, &old).unwrap();
        assert_eq!(s.traffic(&web).unwrap(), old);

        // Each rejected split leaves the old one in place.
        let failed = s.set_traffic(&web, &split(&[(&r1, 90, None), (&r2, 10, None)]));
        assert!(
            matches!(failed, Err(StateError::RevisionFailed { .. })),
            "{failed:?}"
        );
        let e = s.set_traffic(&web, &split(&[(&r1, 50, None)])).unwrap_err();
        assert!(e.to_string().contains("sum to 50"), "{e}");
        let e = s
            .set_traffic(&web, &split(&[(&web.revision(7), 100, None)]))
            .unwrap_err();
        assert!(e.to_string().contains("unknown revision web-00007"), "{e}");
        let other = s.create_revision(&svc("api"), &spec("busybox")).unwrap();
        assert!(s.set_traffic(&web, &split(&[(&other, 100, None)])).is_err());
        assert!(matches!(
            s.set_traffic(
                &svc("ghost"),
                &split(&[(&svc("ghost").revision(1), 100, None)])
            ),
            Err(StateError::NoSuchService(_))
        ));
        assert_eq!(s.traffic(&web).unwrap(), old);

        // Rollout once the new revision is ready.
        s.set_revision_status(&r2, RevisionStatus::Ready, None)
            .unwrap();
        let new = split(&[(&r2, 90, Some("next")), (&r1, 10, None)]);
        s.set_traffic(&web, &new).unwrap();
        assert_eq!(s.traffic(&web).unwrap(), new);
    }

    #[test]
    fn delete_cascades_and_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (web, api) = (svc("web"), svc("api"));
        let full = ServiceSpec {
            env: vec![("GREETING".into(), "hi".into())],
            concurrency: 10,
            max: 50,
            idle_timeout: Duration::from_millis(1500),
            readiness_path: Some("/healthz".into()),
            ..spec("busybox")
        };
        {
            let s = State::open(&path).unwrap();
            for name in [&web, &api] {
                let r = s.create_revision(name, &full).unwrap();
                s.set_traffic(name, &split(&[(&r, 100, Some("live"))]))
                    .unwrap();
            }
        }
        let s = State::open(&path).unwrap();
        assert_eq!(s.list_services().unwrap().len(), 2);
        let rev = s.get_revision(&web.revision(1)).unwrap().unwrap();
        assert_eq!(rev.spec, full);
        assert_eq!(s.traffic(&web).unwrap()[0].tag.as_deref(), Some("live"));

        assert!(s.delete_service(&web).unwrap());
        assert!(!s.delete_service(&web).unwrap());
        assert!(s.get_service(&web).unwrap().is_none());
        assert!(s.list_revisions(&web).unwrap().is_empty());
        assert!(s.traffic(&web).unwrap().is_empty());
        // No orphans left behind in the raw tables either.
        let orphans: i64 = s
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM revisions WHERE service = 'web')
                      + (SELECT COUNT(*) FROM traffic WHERE service = 'web')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(orphans, 0);
        // The other service is untouched, and a redeploy starts afresh.
        assert_eq!(s.traffic(&api).unwrap().len(), 1);
        assert_eq!(s.create_revision(&web, &full).unwrap(), web.revision(1));
    }

    /// A database written by a skiff that knew only containers gains the
    /// service tables on first open.
    #[test]
    fn upgrades_a_containers_only_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(crate::MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let s = State::open(&path).unwrap();
        assert!(s.list_containers().unwrap().is_empty());
        assert_eq!(
            s.create_revision(&svc("web"), &spec("busybox")).unwrap(),
            svc("web").revision(1)
        );
    }

    /// Deploys racing from several processes (here: connections on
    /// threads) must each get their own number, with no gaps.
    #[test]
    fn concurrent_deploys_get_unique_consecutive_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        State::open(&path).unwrap();
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let s = State::open(&path).unwrap();
                    (0..5)
                        .map(|_| {
                            s.create_revision(&svc("web"), &spec("busybox"))
                                .unwrap()
                                .number()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut numbers: Vec<u32> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=30).collect::<Vec<u32>>());
        let s = State::open(&path).unwrap();
        assert_eq!(s.list_revisions(&svc("web")).unwrap().len(), 30);
        assert_eq!(s.get_service(&svc("web")).unwrap().unwrap().generation, 30);
    }
}
