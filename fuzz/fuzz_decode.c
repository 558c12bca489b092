/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the snapshot decoder (src/format.c): `make fuzz`.
 * The work is in harness.h, which the corpus regression test shares.
 */
#include <stddef.h>
#include <stdint.h>
#include "harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	harness_run(data, size);
	return 0;
}
