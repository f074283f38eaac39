/* topics.c — the topic registry, its persistence in the data dir, and topic
 * administration (create, alter, delete).
 *
 * On disk: <data-dir>/<topic>/topic.conf (settings, written last and
 * atomically, so its presence means the topic was fully created) and
 * <data-dir>/<topic>/<partition>/ (one log each). A topic being deleted is
 * renamed to <data-dir>/.trash-<topic>-<ns> and then removed; start-up
 * finishes whatever a crash interrupted: trash and half-created topics are
 * removed, partition directories past the configured count (an interrupted
 * alter) too.
 *
 * File-system work after start-up runs on the worker thread (worker.h);
 * the registry itself is loop-thread only.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "broker/broker.h"
#include "broker/worker.h"
#include "common/say.h"

#define TOPIC_CONF "topic.conf"
#define TRASH_PREFIX ".trash-"

/* Formats into a fixed buffer. Paths cannot overflow: data.dir is limited
 * to leave room for "/<topic>/<partition>/<segment file>" (config.c). */
static void sfmt(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void sfmt(char *out, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(out, cap, fmt, ap);
	va_end(ap);
}

/* ---- registry ---- */

static uint32_t name_hash(const char *s, size_t n)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (size_t i = 0; i < n; i++) {
		h ^= (uint8_t)s[i];
		h *= 16777619u;
	}
	return h;
}

int registry_init(struct registry *r)
{
	r->nslots = 1024;
	r->slots = calloc(r->nslots, sizeof(*r->slots));
	r->count = r->partitions = 0;
	return r->slots ? 0 : -ENOMEM;
}

void registry_fini(struct registry *r)
{
	free(r->slots);
	r->slots = NULL;
}

struct topic *registry_find(struct registry *r, const char *name, size_t len)
{
	for (struct topic *t = r->slots[name_hash(name, len) & (r->nslots - 1)]; t; t = t->hnext)
		if (t->name_len == len && memcmp(t->name, name, len) == 0)
			return t;
	return NULL;
}

static void registry_grow(struct registry *r)
{
	uint32_t n = r->nslots * 2;
	struct topic **s = calloc(n, sizeof(*s));
	if (s == NULL)
		return; /* chains just get longer */
	for (uint32_t i = 0; i < r->nslots; i++) {
		for (struct topic *t = r->slots[i], *next; t; t = next) {
			next = t->hnext;
			uint32_t b = name_hash(t->name, t->name_len) & (n - 1);
			t->hnext = s[b];
			s[b] = t;
		}
	}
	free(r->slots);
	r->slots = s;
	r->nslots = n;
}

static void registry_add(struct registry *r, struct topic *t)
{
	if (r->count + 1 > r->nslots)
		registry_grow(r);
	uint32_t b = name_hash(t->name, t->name_len) & (r->nslots - 1);
	t->hnext = r->slots[b];
	r->slots[b] = t;
	r->count++;
}

static void registry_remove(struct registry *r, struct topic *t)
{
	uint32_t b = name_hash(t->name, t->name_len) & (r->nslots - 1);
	for (struct topic **p = &r->slots[b]; *p; p = &(*p)->hnext) {
		if (*p == t) {
			*p = t->hnext;
			r->count--;
			return;
		}
	}
}

static struct topic *topic_new(const char *name, size_t len, const struct topic_config *cfg)
{
	struct topic *t = calloc(1, sizeof(*t));
	if (t == NULL)
		return NULL;
	memcpy(t->name, name, len);
	t->name_len = (uint16_t)len;
	t->cfg = *cfg;
	return t;
}

static void topic_free(struct topic *t)
{
	for (uint32_t i = 0; i < t->nparts; i++) {
		free(t->parts[i]->producers);
		free(t->parts[i]);
	}
	free(t->parts);
	free(t);
}

/* Adds partitions [t->nparts, t->nparts + n) with their logs. */
static int topic_add_parts(struct registry *r, struct topic *t, struct log **logs, uint32_t n)
{
	struct partition **np = realloc(t->parts, (t->nparts + n) * sizeof(*np));
	if (np == NULL)
		return -ENOMEM;
	t->parts = np;
	for (uint32_t i = 0; i < n; i++) {
		struct partition *p = calloc(1, sizeof(*p));
		if (p == NULL)
			return -ENOMEM;
		p->topic = t;
		p->id = t->nparts;
		p->log = logs[i];
		p->waiters.next = p->waiters.prev = &p->waiters;
		log_set_visible_listener(p->log, partition_visible, p);
		t->parts[t->nparts++] = p;
		if (t->state == TOPIC_LIVE)
			r->partitions++;
	}
	return 0;
}

/* ---- files (worker thread, or start-up) ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	if (remove(path) != 0 && errno != ENOENT)
		say_warn("cannot remove %s: %s", path, strerror(errno));
	return 0;
}

static void rm_tree(const char *path)
{
	nftw(path, rm_entry, 32, FTW_DEPTH | FTW_PHYS);
}

static int fsync_path(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int ret = fsync(fd) == 0 ? 0 : -errno;
	close(fd);
	return ret;
}

/* Writes topic.conf atomically: a temp file, fsync, rename, fsync dir. */
static int write_topic_conf(const char *topic_dir, const struct topic_config *tc)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	sfmt(tmp, sizeof(tmp), "%s/%s.tmp", topic_dir, TOPIC_CONF);
	sfmt(path, sizeof(path), "%s/%s", topic_dir, TOPIC_CONF);
	char text[2048];
	int n = snprintf(text, sizeof(text), "# ringmq topic settings, written by ringmqd\n"
					   "partitions = %u\n", tc->partitions);
	for (int i = 0; topic_config_keys[i] != NULL; i++) {
		char v[64];
		topic_config_get(tc, topic_config_keys[i], v, sizeof(v));
		n += snprintf(text + n, sizeof(text) - (size_t)n, "%s = %s\n", topic_config_keys[i],
			      v);
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	int ret = 0;
	if (write(fd, text, (size_t)n) != n || fsync(fd) != 0)
		ret = errno ? -errno : -EIO;
	close(fd);
	if (ret == 0 && rename(tmp, path) != 0)
		ret = -errno;
	if (ret == 0)
		ret = fsync_path(topic_dir);
	if (ret != 0)
		unlink(tmp);
	return ret;
}

static int read_topic_conf(const char *topic_dir, struct topic_config *tc, char *why, size_t cap)
{
	char path[PATH_MAX];
	sfmt(path, sizeof(path), "%s/%s", topic_dir, TOPIC_CONF);
	FILE *f = fopen(path, "re");
	if (f == NULL) {
		sfmt(why, cap, "cannot read %s: %s", path, strerror(errno));
		return -errno;
	}
	char line[1024];
	int lineno = 0, ret = 0;
	bool have_parts = false;
	while (ret == 0 && fgets(line, sizeof(line), f) != NULL) {
		lineno++;
		/* The broker writes short lines: a longer one was not its own. */
		if (strchr(line, '\n') == NULL && !feof(f)) {
			sfmt(why, cap, "%s:%d: line longer than %zu bytes", path, lineno,
			     sizeof(line) - 2);
			ret = -EINVAL;
			break;
		}
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		char *eq = strchr(line, '=');
		char *k = line, *v;
		while (*k == ' ' || *k == '\t')
			k++;
		if (*k == '\0' || *k == '\n')
			continue;
		if (eq == NULL) {
			sfmt(why, cap, "%s:%d: expected key = value", path, lineno);
			ret = -EINVAL;
			break;
		}
		*eq = '\0';
		v = eq + 1;
		for (char *e = eq - 1; e >= k && (*e == ' ' || *e == '\t'); e--)
			*e = '\0';
		while (*v == ' ' || *v == '\t')
			v++;
		v[strcspn(v, " \t\r\n")] = '\0';
		if (strcmp(k, "partitions") == 0) {
			uint64_t n;
			if (parse_u64(v, false, &n) != 0 || n < 1 || n > PARTITIONS_MAX) {
				sfmt(why, cap, "%s:%d: bad partitions '%s'", path, lineno, v);
				ret = -EINVAL;
				break;
			}
			tc->partitions = (uint32_t)n;
			have_parts = true;
			continue;
		}
		char inner[256];
		if (topic_config_set(tc, k, v, inner, sizeof(inner)) != 0) {
			sfmt(why, cap, "%s:%d: %s", path, lineno, inner);
			ret = -EINVAL;
		}
	}
	fclose(f);
	if (ret == 0 && !have_parts) {
		sfmt(why, cap, "%s: no partitions line", path);
		ret = -EINVAL;
	}
	return ret;
}

/* ---- jobs: create topic, add partitions, write settings, delete ---- */

enum job_kind { JOB_CREATE, JOB_ALTER, JOB_DELETE };

struct topic_job {
	struct job job;
	enum job_kind kind;
	struct log_env *env;
	struct topic *t;           /* loop-owned: run() reads only name */
	char topic_dir[PATH_MAX];
	char trash_dir[PATH_MAX];
	char data_dir[PATH_MAX];
	struct topic_config cfg;   /* the settings to write */
	uint32_t first, count;     /* partitions to create */
	struct log **logs;
	int err;
	char why[300];
	struct conn *c;
	uint32_t corr;
	uint16_t api;
	/* JOB_DELETE: the record that the groups forget the topic could not
	 * be stored before (a full disk, which the deletion remedies): it is
	 * written again once the files are removed, before the answer. */
	bool forget_offsets;
	struct loop *l;
	char name[TOPIC_NAME_MAX + 1];
	int64_t forget_deadline, forget_next_ms; /* retried every 100 ms until then */
	struct topic_job *next_forget;           /* in l->forgets */
};

static void job_run(struct job *job)
{
	struct topic_job *j = (struct topic_job *)job;
	if (j->kind == JOB_DELETE) {
		if (rename(j->topic_dir, j->trash_dir) != 0) {
			j->err = -errno;
			sfmt(j->why, sizeof(j->why), "cannot move %s aside: %s", j->topic_dir,
				 strerror(errno));
			return;
		}
		fsync_path(j->data_dir);
		rm_tree(j->trash_dir);
		return;
	}
	if (j->kind == JOB_CREATE) {
		rm_tree(j->topic_dir); /* a stale directory from an interrupted create */
		if (mkdir(j->topic_dir, 0755) != 0) {
			j->err = -errno;
			sfmt(j->why, sizeof(j->why), "cannot create %s: %s", j->topic_dir,
				 strerror(errno));
			return;
		}
	}
	uint32_t opened = 0;
	for (uint32_t i = 0; i < j->count && j->err == 0; i++) {
		char pdir[PATH_MAX];
		sfmt(pdir, sizeof(pdir), "%s/%u", j->topic_dir, j->first + i);
		if (mkdir(pdir, 0755) != 0 && errno != EEXIST) {
			j->err = -errno;
			sfmt(j->why, sizeof(j->why), "cannot create %s: %s", pdir,
				 strerror(errno));
			break;
		}
		int ret = log_open(j->env, pdir, &j->cfg.log, &j->logs[i], NULL);
		if (ret != 0) {
			j->err = ret;
			sfmt(j->why, sizeof(j->why), "cannot start the log in %s: %s", pdir,
				 strerror(-ret));
			break;
		}
		opened++;
	}
	if (j->err == 0) {
		int ret = fsync_path(j->topic_dir);
		if (ret == 0)
			ret = write_topic_conf(j->topic_dir, &j->cfg);
		if (ret == 0 && j->kind == JOB_CREATE)
			ret = fsync_path(j->data_dir);
		if (ret != 0) {
			j->err = ret;
			sfmt(j->why, sizeof(j->why), "cannot write the settings of %s: %s",
				 j->topic_dir, strerror(-ret));
		}
	}
	if (j->err != 0) {
		/* Undo: fresh logs have no I/O in flight and are in no list of
		 * the env, so discarding them here is safe. */
		for (uint32_t i = 0; i < opened; i++)
			log_discard(j->logs[i]);
		if (j->kind == JOB_CREATE) {
			rm_tree(j->topic_dir);
		} else {
			for (uint32_t i = 0; i < opened; i++) {
				char pdir[PATH_MAX];
				sfmt(pdir, sizeof(pdir), "%s/%u", j->topic_dir, j->first + i);
				rm_tree(pdir);
			}
		}
	}
}

static void job_reply(struct topic_job *j)
{
	struct conn *c = j->c;
	if (j->err != 0)
		respond_error(c, j->api, j->corr, err_from_errno(j->err), "%s", j->why);
	else
		respond_ok(c, j->corr);
	conn_request_done(c);
	conn_unref(c);
}

/* The record that every group forgets a deleted topic, written again once
 * its files are gone: a few tries over FORGET_RETRY_MS (the offsets log may
 * still be cleaning up after the write that failed), then the deletion is
 * answered. */
#define FORGET_RETRY_MS 5000

static void offsets_dropped_late(void *arg, int err);

static void forget_try(struct topic_job *j)
{
	struct offset_rec rec = { NULL, j->name, 0, 0 };
	int err = offsets_append(j->l, &rec, 1, offsets_dropped_late, j);
	if (err != 0)
		offsets_dropped_late(j, err);
}

static void offsets_dropped_late(void *arg, int err)
{
	struct topic_job *j = arg;
	int64_t now = now_ms();
	if (err != 0 && err != -ESHUTDOWN && now < j->forget_deadline && !j->l->stopping) {
		j->forget_next_ms = now + 100;
		j->next_forget = j->l->forgets;
		j->l->forgets = j;
		return;
	}
	struct offset_rec rec = { NULL, j->name, 0, 0 };
	/* In memory either way: this broker must not hand a topic created
	 * again under the name the old topic's offsets. */
	groups_apply(j->l, &rec);
	if (err != 0) {
		j->err = err;
		sfmt(j->why, sizeof(j->why),
		     "topic %s was deleted, but its consumer-group offsets could not be dropped "
		     "durably (%s): a restart would bring them back", j->name, strerror(-err));
		say_error("%s", j->why);
	} else {
		say_info("deleting topic %s: dropped its group offsets", j->name);
	}
	job_reply(j);
	free(j->logs);
	free(j);
}

static void job_done(struct loop *l, struct job *job)
{
	struct topic_job *j = (struct topic_job *)job;
	struct topic *t = j->t;
	if (j->kind == JOB_DELETE) {
		if (j->err != 0)
			say_error("deleting topic %s: %s", t->name, j->why);
		else
			say_info("deleted topic %s", t->name);
		sfmt(j->name, sizeof(j->name), "%s", t->name);
		registry_remove(&l->reg, t);
		topic_free(t);
		j->err = 0; /* the topic is gone from the broker either way */
		if (j->forget_offsets) {
			j->l = l;
			j->forget_deadline = now_ms() + FORGET_RETRY_MS;
			forget_try(j);
			return; /* answered by offsets_dropped_late */
		}
	} else if (j->err != 0) {
		say_error("%s topic %s: %s", j->kind == JOB_CREATE ? "creating" : "altering",
			  t->name, j->why);
		if (j->kind == JOB_CREATE) {
			registry_remove(&l->reg, t);
			topic_free(t);
		} else {
			t->busy = false;
		}
	} else {
		if (topic_add_parts(&l->reg, t, j->logs, j->count) != 0) {
			j->err = -ENOMEM;
			sfmt(j->why, sizeof(j->why), "out of memory adding partitions");
		}
		t->cfg = j->cfg;
		t->cfg.partitions = t->nparts;
		for (uint32_t i = 0; i < t->nparts; i++) {
			log_set_config(t->parts[i]->log, &t->cfg.log);
			log_tick(t->parts[i]->log, now_ms());
		}
		if (j->kind == JOB_CREATE) {
			t->state = TOPIC_LIVE;
			l->reg.partitions += t->nparts;
			say_info("created topic %s with %u partitions", t->name, t->nparts);
		} else {
			say_info("altered topic %s (%u partitions)", t->name, t->nparts);
		}
		t->busy = false;
		groups_topics_changed(l); /* new partitions get owners */
	}
	job_reply(j);
	free(j->logs);
	free(j);
}

static struct topic_job *job_new(struct loop *l, enum job_kind kind, struct topic *t,
				 struct conn *c, uint32_t corr, uint16_t api, uint32_t count)
{
	struct topic_job *j = calloc(1, sizeof(*j));
	if (j == NULL)
		return NULL;
	j->logs = calloc(count ? count : 1, sizeof(*j->logs));
	if (j->logs == NULL) {
		free(j);
		return NULL;
	}
	j->job.run = job_run;
	j->job.done = job_done;
	j->kind = kind;
	j->env = l->env;
	j->t = t;
	j->c = c;
	j->corr = corr;
	j->api = api;
	j->count = count;
	sfmt(j->data_dir, sizeof(j->data_dir), "%s", l->cfg->data_dir);
	sfmt(j->topic_dir, sizeof(j->topic_dir), "%s/%s", l->cfg->data_dir, t->name);
	return j;
}

static void job_submit(struct loop *l, struct topic_job *j)
{
	j->c->inflight++;
	conn_ref(j->c);
	worker_submit(l->worker, &j->job);
}

/* Applies requested settings to a copy of the current ones. A batch of
 * max.message.bytes must fit a produce frame with room for its header, as
 * broker_config_check demands of the default: a frame over max.frame.bytes
 * closes the connection instead of getting BATCH_TOO_LARGE. */
static int apply_configs(const struct loop *l, struct topic_config *tc, uint32_t n,
			 const struct proto_kv *kv, char *why, size_t cap)
{
	for (uint32_t i = 0; i < n; i++) {
		char k[128], v[256];
		if (kv[i].key.len >= sizeof(k) || kv[i].value.len >= sizeof(v)) {
			sfmt(why, cap, "setting name or value too long");
			return -EINVAL;
		}
		memcpy(k, kv[i].key.p, kv[i].key.len);
		k[kv[i].key.len] = '\0';
		memcpy(v, kv[i].value.p, kv[i].value.len);
		v[kv[i].value.len] = '\0';
		if (topic_config_set(tc, k, v, why, cap) != 0)
			return -EINVAL;
	}
	if (topic_config_check(tc, why, cap) != 0)
		return -EINVAL;
	if ((uint64_t)tc->max_message_bytes + 4096u > l->cfg->max_frame_bytes) {
		sfmt(why, cap, "max.message.bytes %u is too large for this broker: at most %u "
		     "(max.frame.bytes %u less 4096)", tc->max_message_bytes,
		     l->cfg->max_frame_bytes - 4096u, l->cfg->max_frame_bytes);
		return -EINVAL;
	}
	return 0;
}

void handle_create_topic(struct conn *c, uint32_t corr, const struct proto_create_topic_req *req)
{
	struct loop *l = c->loop;
	const struct broker_config *cfg = l->cfg;
	if (!topic_name_valid(req->name.p, req->name.len)) {
		respond_error(c, API_CREATE_TOPIC, corr, ERR_INVALID_TOPIC_NAME,
			      "topic name '%.*s' is invalid: use 1 to 200 of A-Z a-z 0-9 . _ -, "
			      "not starting with '.'",
			      req->name.len > 200 ? 200 : req->name.len, req->name.p);
		return;
	}
	if (registry_find(&l->reg, req->name.p, req->name.len) != NULL) {
		respond_error(c, API_CREATE_TOPIC, corr, ERR_TOPIC_EXISTS,
			      "topic '%.*s' already exists", req->name.len, req->name.p);
		return;
	}
	uint32_t parts = req->partitions ? req->partitions : cfg->topic_defaults.partitions;
	if (parts > cfg->max_partitions_per_topic) {
		respond_error(c, API_CREATE_TOPIC, corr, ERR_INVALID_PARTITIONS,
			      "%u partitions exceeds max.partitions.per.topic (%u)", parts,
			      cfg->max_partitions_per_topic);
		return;
	}
	if (l->reg.count >= cfg->max_topics) {
		respond_error(c, API_CREATE_TOPIC, corr, ERR_LIMIT_EXCEEDED,
			      "the broker already has max.topics (%u) topics", cfg->max_topics);
		return;
	}
	struct topic_config tc = cfg->topic_defaults;
	tc.partitions = parts;
	char why[256];
	if (apply_configs(c->loop, &tc, req->nconfigs, req->configs, why, sizeof(why)) != 0) {
		respond_error(c, API_CREATE_TOPIC, corr, ERR_INVALID_CONFIG, "%s", why);
		return;
	}
	struct topic *t = topic_new(req->name.p, req->name.len, &tc);
	struct topic_job *j = t ? job_new(l, JOB_CREATE, t, c, corr, API_CREATE_TOPIC, parts) : NULL;
	if (j == NULL) {
		free(t);
		respond_error(c, API_CREATE_TOPIC, corr, ERR_BUSY, "out of memory");
		return;
	}
	t->state = TOPIC_CREATING;
	t->busy = true;
	registry_add(&l->reg, t);
	j->cfg = tc;
	j->first = 0;
	job_submit(l, j);
}

void handle_alter_topic(struct conn *c, uint32_t corr, const struct proto_alter_topic_req *req)
{
	struct loop *l = c->loop;
	struct topic *t = registry_find(&l->reg, req->name.p, req->name.len);
	if (t == NULL || t->state != TOPIC_LIVE) {
		respond_error(c, API_ALTER_TOPIC, corr, ERR_UNKNOWN_TOPIC,
			      "topic '%.*s' does not exist", req->name.len, req->name.p);
		return;
	}
	if (t->busy) {
		respond_error(c, API_ALTER_TOPIC, corr, ERR_BUSY,
			      "topic '%s' is being changed; try again", t->name);
		return;
	}
	uint32_t parts = req->partitions ? req->partitions : t->nparts;
	if (parts < t->nparts) {
		respond_error(c, API_ALTER_TOPIC, corr, ERR_INVALID_PARTITIONS,
			      "partitions can only grow: topic '%s' has %u", t->name, t->nparts);
		return;
	}
	if (parts > l->cfg->max_partitions_per_topic) {
		respond_error(c, API_ALTER_TOPIC, corr, ERR_INVALID_PARTITIONS,
			      "%u partitions exceeds max.partitions.per.topic (%u)", parts,
			      l->cfg->max_partitions_per_topic);
		return;
	}
	struct topic_config tc = t->cfg;
	tc.partitions = parts;
	char why[256];
	if (apply_configs(c->loop, &tc, req->nconfigs, req->configs, why, sizeof(why)) != 0) {
		respond_error(c, API_ALTER_TOPIC, corr, ERR_INVALID_CONFIG, "%s", why);
		return;
	}
	struct topic_job *j = job_new(l, JOB_ALTER, t, c, corr, API_ALTER_TOPIC,
				      parts - t->nparts);
	if (j == NULL) {
		respond_error(c, API_ALTER_TOPIC, corr, ERR_BUSY, "out of memory");
		return;
	}
	t->busy = true;
	j->cfg = tc;
	j->first = t->nparts;
	job_submit(l, j);
}

struct delete_req {
	struct delete_req *next;
	struct loop *l;
	struct topic *t;
	struct conn *c;
	uint32_t corr;
	bool offsets_pending; /* the groups' offsets for it are being dropped */
	bool offsets_failed;  /* that could not be stored: try again after the files go */
};

/* The store's record that every group forgets the topic is durable: a
 * topic created later under the name cannot inherit offsets. */
static void offsets_dropped(void *arg, int err)
{
	struct delete_req *d = arg;
	d->offsets_pending = false;
	if (err != 0) {
		/* Most likely a full disk, which removing the topic's files is
		 * about to remedy: the deletion goes ahead, and the record is
		 * written again before the deletion is answered. */
		say_warn("deleting topic %s: cannot drop its group offsets yet (%s); trying again "
			 "once its files are removed", d->t->name, strerror(-err));
		d->offsets_failed = true;
		return;
	}
	struct offset_rec rec = { NULL, d->t->name, 0, 0 };
	groups_apply(d->l, &rec);
}

void handle_delete_topic(struct conn *c, uint32_t corr, const struct proto_delete_topic_req *req)
{
	struct loop *l = c->loop;
	struct topic *t = registry_find(&l->reg, req->name.p, req->name.len);
	if (t == NULL || t->state != TOPIC_LIVE) {
		respond_error(c, API_DELETE_TOPIC, corr, ERR_UNKNOWN_TOPIC,
			      "topic '%.*s' does not exist", req->name.len, req->name.p);
		return;
	}
	if (t->busy) {
		respond_error(c, API_DELETE_TOPIC, corr, ERR_BUSY,
			      "topic '%s' is being changed; try again", t->name);
		return;
	}
	struct delete_req *d = calloc(1, sizeof(*d));
	if (d == NULL) {
		respond_error(c, API_DELETE_TOPIC, corr, ERR_BUSY, "out of memory");
		return;
	}
	t->state = TOPIC_DELETING;
	t->busy = true;
	l->reg.partitions -= t->nparts;
	/* Long polls on its partitions answer now (UNKNOWN_TOPIC). */
	for (uint32_t i = 0; i < t->nparts; i++) {
		struct partition *p = t->parts[i];
		while (p->waiters.next != &p->waiters)
			fetch_expire(l, p->waiters.next->fr);
	}
	d->l = l;
	d->t = t;
	d->c = c;
	d->corr = corr;
	d->next = l->deletes;
	l->deletes = d;
	c->inflight++;
	conn_ref(c);
	groups_topics_changed(l); /* owners release its partitions */
	struct offset_rec rec = { NULL, t->name, 0, 0 };
	d->offsets_pending = true;
	int err = offsets_append(l, &rec, 1, offsets_dropped, d);
	if (err != 0)
		offsets_dropped(d, err);
}

/* Deletions wait until their logs are idle, then drop them and hand the
 * files to the worker. */
void topics_poll_deletes(struct loop *l)
{
	int64_t now = now_ms();
	for (struct topic_job **pj = &l->forgets; *pj;) {
		struct topic_job *j = *pj;
		if (now < j->forget_next_ms) {
			pj = &j->next_forget;
			continue;
		}
		*pj = j->next_forget;
		forget_try(j); /* may put it back at the head: already passed */
	}
	for (struct delete_req **pd = &l->deletes; *pd;) {
		struct delete_req *d = *pd;
		struct topic *t = d->t;
		bool busy = d->offsets_pending;
		for (uint32_t i = 0; i < t->nparts; i++)
			busy |= t->parts[i]->log != NULL && log_busy(t->parts[i]->log);
		if (busy) {
			pd = &d->next;
			continue;
		}
		*pd = d->next;
		for (uint32_t i = 0; i < t->nparts; i++) {
			if (t->parts[i]->log)
				log_discard(t->parts[i]->log);
			t->parts[i]->log = NULL;
		}
		struct topic_job *j = job_new(l, JOB_DELETE, t, d->c, d->corr, API_DELETE_TOPIC, 0);
		if (j == NULL) {
			say_error("deleting topic %s: out of memory; files left in place", t->name);
			registry_remove(&l->reg, t);
			topic_free(t);
			respond_ok(d->c, d->corr);
			conn_request_done(d->c);
			conn_unref(d->c);
		} else {
			sfmt(j->trash_dir, sizeof(j->trash_dir), "%s/%s%s-%" PRId64,
				 l->cfg->data_dir, TRASH_PREFIX, t->name, now_ms());
			j->forget_offsets = d->offsets_failed;
			worker_submit(l->worker, &j->job); /* the delete_req's ref moves over */
		}
		free(d);
	}
}

void topics_tick(struct loop *l, int64_t now)
{
	struct registry *r = &l->reg;
	for (uint32_t s = 0; s < r->nslots; s++)
		for (struct topic *t = r->slots[s]; t != NULL; t = t->hnext)
			if (t->state == TOPIC_LIVE)
				for (uint32_t i = 0; i < t->nparts; i++)
					log_tick(t->parts[i]->log, now);
}

/* A flush-always partition shows its active segment once an fdatasync has
 * covered it (log_open: a kill -9 may have left it in the page cache).
 * Served before that, it would end before its old end for a while after a
 * restart, and a consumer asking for the latest offset then would be sent
 * back over messages. So the start waits for those fdatasyncs, all in
 * flight at once: they cost little, since every acknowledged write was
 * fdatasynced before the crash. Other partitions show their tail at once;
 * their first fdatasync (of what flush=never left in the page cache) is
 * not waited for. */
void topics_sync_at_start(struct loop *l)
{
	struct registry *r = &l->reg;
	topics_tick(l, now_ms());
	for (;;) {
		log_env_flush(l->env);
		uint32_t waiting = 0;
		for (uint32_t s = 0; s < r->nslots; s++)
			for (struct topic *t = r->slots[s]; t != NULL; t = t->hnext)
				for (uint32_t i = 0; t->state == TOPIC_LIVE && i < t->nparts; i++) {
					struct log *log = t->parts[i]->log;
					waiting += log_error(log) == 0 &&
						   log_visible_end(log) < log_written_end(log);
				}
		if (waiting == 0)
			return;
		int ret = ioq_wait(&l->q, 100);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
			return; /* the loop reports it */
	}
}

/* ---- start-up and shutdown ---- */

static int lock_data_dir(const char *dir)
{
	char path[PATH_MAX];
	sfmt(path, sizeof(path), "%s/.lock", dir);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		int err = errno == EWOULDBLOCK ? -EBUSY : -errno;
		close(fd);
		return err;
	}
	return fd; /* held until the process exits */
}

static int load_topic(struct loop *l, const char *name)
{
	char dir[PATH_MAX], why[512];
	sfmt(dir, sizeof(dir), "%s/%s", l->cfg->data_dir, name);
	struct stat st;
	char conf[PATH_MAX];
	sfmt(conf, sizeof(conf), "%s/%s", dir, TOPIC_CONF);
	if (stat(conf, &st) != 0) {
		say_warn("removing %s: its creation never completed (no %s)", dir, TOPIC_CONF);
		rm_tree(dir);
		return 0;
	}
	struct topic_config tc = l->cfg->topic_defaults;
	int ret = read_topic_conf(dir, &tc, why, sizeof(why));
	if (ret == 0)
		ret = topic_config_check(&tc, why, sizeof(why)) ? -EINVAL : 0;
	if (ret != 0) {
		say_error("topic %s: %s", name, why);
		return ret;
	}
	struct topic *t = topic_new(name, strlen(name), &tc);
	struct log **logs = calloc(tc.partitions, sizeof(*logs));
	if (t == NULL || logs == NULL) {
		free(t);
		free(logs);
		return -ENOMEM;
	}
	t->state = TOPIC_LIVE;
	for (uint32_t i = 0; i < tc.partitions; i++) {
		char pdir[PATH_MAX];
		sfmt(pdir, sizeof(pdir), "%s/%u", dir, i);
		if (mkdir(pdir, 0755) == 0)
			say_warn("topic %s: partition %u had no directory; starting it empty", name, i);
		struct log_recovery rep;
		ret = log_open(l->env, pdir, &tc.log, &logs[i], &rep);
		if (ret != 0) {
			say_error("topic %s partition %u: cannot open its log: %s", name, i,
				  strerror(-ret));
			for (uint32_t k = 0; k < i; k++)
				log_close(logs[k]);
			free(logs);
			free(t);
			return ret;
		}
		if (rep.truncated_why)
			say_warn("topic %s partition %u: recovery cut %" PRIu64 " bytes at %" PRIu64
				 " (%s)", name, i, rep.truncated_bytes, rep.truncated_at,
				 rep.truncated_why);
	}
	/* Partitions past the count are left from an interrupted alter. */
	for (uint32_t i = tc.partitions;; i++) {
		char pdir[PATH_MAX];
		sfmt(pdir, sizeof(pdir), "%s/%u", dir, i);
		if (stat(pdir, &st) != 0)
			break;
		say_warn("topic %s: removing partition directory %u, beyond its %u partitions",
			 name, i, tc.partitions);
		rm_tree(pdir);
	}
	registry_add(&l->reg, t);
	topic_add_parts(&l->reg, t, logs, tc.partitions);
	free(logs);
	/* Idempotent producers retrying what they sent before the restart
	 * (a kill -9 took the acknowledgements) must get the original
	 * offsets, not a second copy: rebuild who sent what from each log's
	 * tail before any produce is served. */
	for (uint32_t i = 0; i < t->nparts; i++) {
		int n = produce_restore_producers(t->parts[i]);
		if (n < 0)
			say_warn("topic %s partition %u: cannot read the log's tail for idempotent "
				 "producers (%s); a retry of a batch stored before the restart may "
				 "be stored again", name, i, strerror(-n));
		else if (n > 0)
			say_debug("topic %s partition %u: %d idempotent producers restored from the "
				  "log's tail", name, i, n);
	}
	return 0;
}

int topics_load(struct loop *l)
{
	const char *data = l->cfg->data_dir;
	if (mkdir(data, 0755) != 0 && errno != EEXIST) {
		say_error("cannot create data dir %s: %s", data, strerror(errno));
		return -errno;
	}
	int lock = lock_data_dir(data);
	if (lock < 0) {
		say_error(lock == -EBUSY ? "data dir %s is in use by another ringmqd"
					 : "cannot lock data dir %s", data);
		return lock;
	}
	DIR *d = opendir(data);
	if (d == NULL) {
		say_error("cannot read data dir %s: %s", data, strerror(errno));
		return -errno;
	}
	struct dirent *de;
	int ret = 0;
	uint32_t topics = 0;
	while (ret == 0 && (de = readdir(d)) != NULL) {
		const char *n = de->d_name;
		if (strcmp(n, ".") == 0 || strcmp(n, "..") == 0 || strcmp(n, ".lock") == 0 ||
		    strcmp(n, ".offsets") == 0)
			continue;
		char path[PATH_MAX];
		sfmt(path, sizeof(path), "%s/%s", data, n);
		if (strncmp(n, TRASH_PREFIX, strlen(TRASH_PREFIX)) == 0) {
			say_info("finishing the deletion of %s", path);
			rm_tree(path);
			continue;
		}
		struct stat st;
		if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode) || !topic_name_valid(n, strlen(n))) {
			say_warn("ignoring %s: not a topic directory", path);
			continue;
		}
		ret = load_topic(l, n);
		if (ret == 0)
			topics++;
	}
	closedir(d);
	if (ret == 0)
		say_info("loaded %u topics, %u partitions from %s", l->reg.count, l->reg.partitions,
			 data);
	return ret;
}

void topics_close_all(struct loop *l)
{
	while (l->forgets != NULL) {
		struct topic_job *j = l->forgets;
		l->forgets = j->next_forget;
		offsets_dropped_late(j, -ESHUTDOWN);
	}
	struct registry *r = &l->reg;
	for (uint32_t s = 0; s < r->nslots; s++) {
		for (struct topic *t = r->slots[s], *n; t != NULL; t = n) {
			n = t->hnext;
			for (uint32_t i = 0; i < t->nparts; i++) {
				if (t->parts[i]->log == NULL)
					continue;
				int ret = log_close(t->parts[i]->log);
				if (ret != 0)
					say_error("topic %s partition %u: close failed: %s", t->name, i,
						  strerror(-ret));
			}
			topic_free(t);
		}
		r->slots[s] = NULL;
	}
	r->count = 0;
}
