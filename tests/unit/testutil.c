/* testutil.c — helpers for the unit tests (see testutil.h). */
#include "tests/unit/testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int64_t tu_mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t tu_mono_ms(void)
{
	return tu_mono_us() / 1000;
}

void tu_sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

#include "storage/batch.h"

char *tu_tmpdir(const char *tag)
{
	const char *base = getenv("TMPDIR");
	char *path;
	if (asprintf(&path, "%s/ringmq-%s-XXXXXX", base ? base : "/tmp", tag) < 0)
		abort();
	if (mkdtemp(path) == NULL) {
		perror("mkdtemp");
		abort();
	}
	return path;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

void tu_rmtree(const char *path)
{
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void tu_value(uint8_t *out, uint32_t len, uint64_t seed, uint32_t i)
{
	uint64_t s = seed * 0x9E3779B97F4A7C15ull + i + 1;
	for (uint32_t k = 0; k < len; k++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		out[k] = (uint8_t)('a' + s % 26);
	}
}

uint8_t *tu_batch(uint32_t count, uint32_t value_len, uint64_t seed, int64_t ts0, bool lz4,
		  uint32_t *len)
{
	size_t cap = BATCH_HEADER_SIZE + (size_t)count * (value_len + 64) + 64;
	uint8_t *buf = malloc(cap);
	uint8_t *val = malloc(value_len + 1);
	struct batch_builder b;
	batch_builder_init(&b, buf, cap);
	for (uint32_t i = 0; i < count; i++) {
		char key[24];
		int kl = snprintf(key, sizeof(key), "k%u", i);
		tu_value(val, value_len, seed, i);
		struct batch_kv h = { .name = "h", .name_len = 1, .value = key, .value_len = (uint32_t)kl };
		if (batch_add(&b, ts0 + i, key, (uint32_t)kl, val, value_len, &h, 1) != 0)
			abort();
	}
	free(val);
	if (!lz4) {
		*len = batch_seal(&b, 0, 0);
		return buf;
	}
	size_t ocap = batch_lz4_bound(b.len);
	uint8_t *out = malloc(ocap);
	ssize_t n = batch_seal_lz4(&b, out, ocap, 0, 0);
	if (n < 0)
		abort();
	free(buf);
	*len = (uint32_t)n;
	return out;
}

void tu_env_init(struct tu_env *t)
{
	if (ioq_init(&t->q, 256) != 0)
		abort();
	t->env = log_env_new(&t->q, 64u << 20);
	if (t->env == NULL)
		abort();
}

void tu_env_fini(struct tu_env *t)
{
	log_env_free(t->env);
	ioq_exit(&t->q);
}

void tu_config(struct log_config *cfg, uint64_t segment_bytes)
{
	log_config_default(cfg);
	cfg->segment_bytes = segment_bytes;
	cfg->index_interval_bytes = 256;
	cfg->segment_ms = -1;
	cfg->retention_ms = -1;
}

uint64_t tu_seed(const char *test)
{
	const char *e = getenv("SEED");
	uint64_t seed;
	if (e != NULL) {
		seed = strtoull(e, NULL, 0);
	} else {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20);
	}
	if (seed == 0)
		seed = 1;
	printf("# %s: SEED=%llu\n", test, (unsigned long long)seed);
	fflush(stdout);
	return seed;
}

uint64_t tu_rand(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

size_t tu_file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

int tu_truncate(const char *path, size_t len)
{
	return truncate(path, (off_t)len) == 0 ? 0 : -errno;
}

int tu_flip(const char *path, size_t pos, uint8_t xor_mask)
{
	int fd = open(path, O_RDWR);
	if (fd < 0)
		return -errno;
	uint8_t b;
	int ret = -EIO;
	if (pread(fd, &b, 1, (off_t)pos) == 1) {
		b ^= xor_mask;
		if (pwrite(fd, &b, 1, (off_t)pos) == 1)
			ret = 0;
	}
	close(fd);
	return ret;
}

int tu_write_junk(const char *path, size_t len, uint64_t seed)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return -errno;
	uint64_t s = seed ? seed : 1;
	for (size_t i = 0; i < len; i++) {
		uint8_t b = (uint8_t)tu_rand(&s);
		if (write(fd, &b, 1) != 1) {
			close(fd);
			return -EIO;
		}
	}
	close(fd);
	return 0;
}

void tu_make_value(char *v, size_t len, size_t i)
{
	char head[16];
	snprintf(head, sizeof(head), "%010zu:", i);
	memcpy(v, head, len < 11 ? len : 11);
	for (size_t k = 11; k < len; k++)
		v[k] = (char)('a' + (i * 7 + k) % 26);
}

size_t tu_value_index(const void *p, size_t len)
{
	if (len < 11 || ((const char *)p)[10] != ':')
		return SIZE_MAX;
	char head[11];
	memcpy(head, p, 10);
	head[10] = '\0';
	char *end;
	unsigned long long i = strtoull(head, &end, 10);
	if (*end != '\0')
		return SIZE_MAX;
	char *want = malloc(len);
	if (want == NULL)
		return SIZE_MAX;
	tu_make_value(want, len, (size_t)i);
	bool same = memcmp(want, p, len) == 0;
	free(want);
	return same ? (size_t)i : SIZE_MAX;
}
