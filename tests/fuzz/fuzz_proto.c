/*
 * tests/fuzz/fuzz_proto.c - the keel:// message decoders and the small
 * stream structures a peer controls (replicate/net-proto.c,
 * replicate/stream-format.c). The first input byte picks the decoder:
 * 0 HELLO, 1 WELCOME, 2 ERROR, 3 HAVE_Q, 4 HAVE_R, 5 token (binary),
 * 6 token (text), 7 keel:// URL, 8 stream header, 9 trailer.
 */
#include "replicate/repl_int.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data + 1;
	size_t n = size ? size - 1 : 0;

	if (size < 1)
		return 0;
	switch (data[0] % 10) {
	case 0: {
		struct repl_hello h;

		if (repl_msg_hello_decode(p, n, &h) == 0)
			repl_target_name_check(h.name);
		repl_msg_hello_release(&h);
		break;
	}
	case 1: {
		struct repl_welcome w;

		if (repl_msg_welcome_decode(p, n, &w) == 0) {
			struct repl_token t;

			if (w.token_len)
				repl_token_decode(w.token, w.token_len, &t);
		}
		repl_msg_welcome_release(&w);
		break;
	}
	case 2: {
		char msg[256];
		int code;

		repl_msg_error_decode(p, n, &code, msg, sizeof(msg));
		break;
	}
	case 3: {
		const uint8_t *hs;
		uint32_t id;
		size_t k;

		repl_msg_haveq_decode(p, n, &id, &hs, &k);
		break;
	}
	case 4: {
		bool held[REPL_HAVE_BATCH];

		if (n >= 8)
			repl_msg_haver_decode(p, n, get_le32(p), KL_MIN((size_t)get_le32(p + 4),
									  (size_t)REPL_HAVE_BATCH),
					      held);
		break;
	}
	case 5: {
		struct repl_token t;

		repl_token_decode(p, n, &t);
		break;
	}
	case 6:
	case 7: {
		char *s = kl_strndup((const char *)p, n);
		struct repl_token t;
		struct repl_url u;

		if (s && data[0] % 10 == 6)
			repl_token_from_text(s, &t);
		else if (s && repl_url_parse(s, &u) == 0)
			repl_url_release(&u);
		kl_free(s);
		break;
	}
	case 8: {
		struct repl_hdr h;

		repl_hdr_decode(p, n, &h);
		break;
	}
	default: {
		struct repl_trailer t;

		repl_trailer_decode(p, n, &t);
		break;
	}
	}
	kl_err_clear();
	return 0;
}
