/* Train the max-of-five MLP on a Cortex-M4F, then predict -- no OS, no heap, no libm.
 *
 *   make run     # exports the model, builds build/main.elf, runs it under qemu-system-arm
 */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "max_of_five_predict.h"
#include "max_of_five_train.h"

enum { BATCH = 32, ROWS = 4, FEATURES = 5, STEPS = 2000 };

/* both memory blocks are static: the exports never allocate */
static uint8_t train[MAX_OF_FIVE_TRAIN_MEM_SIZE] __attribute__((aligned(64)));
static uint8_t predict[MAX_OF_FIVE_PREDICT_MEM_SIZE] __attribute__((aligned(64)));

static uint32_t state = 42;

/* uniform in [-1, 1): a small deterministic generator */
static float uniform(void) {
    state = state * 1664525u + 1013904223u;
    return (float)(state >> 8) / 8388608.0f - 1.0f;
}

/* rows of five inputs and the maximum of each row */
static void batch(float *x, float *y, int rows) {
    for (int i = 0; i < rows; i++) {
        y[i] = -1.0f;
        for (int j = 0; j < FEATURES; j++) {
            x[i * FEATURES + j] = uniform();
            if (x[i * FEATURES + j] > y[i]) y[i] = x[i * FEATURES + j];
        }
    }
}

/* one state tensor from the training memory into the prediction memory */
static void copy(float *to, const float *from, size_t count) {
    memcpy(to, from, count * sizeof(float));
}

int main(void) {
    max_of_five_train_init(train);
    max_of_five_predict_init(predict);
    static float x[BATCH * FEATURES], y[BATCH];
    float loss;
    for (int step = 1; step <= STEPS; step++) {
        batch(x, y, BATCH);
        max_of_five_train_run(train, x, y, &loss);
        if (step <= 3 || step % 500 == 0) {
            put_text("step ");
            put_uint((uint32_t)step);
            put_text("  loss ");
            put_float(loss);
            put_text("\n");
        }
    }
    copy(max_of_five_predict_state_dense1_w(predict), max_of_five_train_state_dense1_w(train), 5 * 32);
    copy(max_of_five_predict_state_dense1_b(predict), max_of_five_train_state_dense1_b(train), 32);
    copy(max_of_five_predict_state_dense2_w(predict), max_of_five_train_state_dense2_w(train), 32 * 16);
    copy(max_of_five_predict_state_dense2_b(predict), max_of_five_train_state_dense2_b(train), 16);
    copy(max_of_five_predict_state_dense3_w(predict), max_of_five_train_state_dense3_w(train), 16);
    copy(max_of_five_predict_state_dense3_b(predict), max_of_five_train_state_dense3_b(train), 1);
    float prediction[ROWS];
    batch(x, y, ROWS);
    max_of_five_predict_run(predict, x, prediction);
    for (int i = 0; i < ROWS; i++) {
        put_text("max ");
        put_float(y[i]);
        put_text("  predicted ");
        put_float(prediction[i]);
        put_text("\n");
    }
    return 0;
}
