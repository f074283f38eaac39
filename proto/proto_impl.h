/* proto_impl.h — what proto.c shares with proto_group.c: the array decoder
 * and the group messages' codec. Internal to proto/. */
#ifndef RINGMQ_PROTO_IMPL_H
#define RINGMQ_PROTO_IMPL_H

#include "proto/proto.h"

#define PROTO_MIN_STR 2u

/* Reads an array's count and allocates its elements. Zero elements give
 * NULL without touching the arena. *err is 0, -EBADMSG or -ENOMEM. */
void *proto_dec_array(struct pr *r, struct arena *a, size_t min_size, size_t elem_size,
		      uint32_t *n, int *err);

bool proto_is_group_api(uint16_t api);
int proto_group_decode_request(uint16_t api, struct pr *r, struct arena *a,
			       union proto_request *out);
void proto_group_encode_request(struct pw *w, uint16_t api, const union proto_request *req);
int proto_group_decode_response(uint16_t api, struct pr *r, struct arena *a,
				union proto_response *out);
void proto_group_encode_response(struct pw *w, uint16_t api, const union proto_response *resp);

#endif
