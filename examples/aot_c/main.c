/* Train the exported max-of-five MLP for a few steps, then predict -- no Python involved.
 *
 *   make            # exports the model (python export_model.py build) and builds ./build/main
 *   make run
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mlp_predict.h"
#include "mlp_train.h"

enum { BATCH = 8, FEATURES = 5, STEPS = 1000 };

static unsigned long long state = 42;

/* uniform in [-1, 1): a small deterministic generator, so every run prints the same */
static double uniform(void) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* a batch of rows and the maximum of each row */
static void batch(double x[BATCH][FEATURES], double y[BATCH][1]) {
    for (int i = 0; i < BATCH; i++) {
        y[i][0] = -1.0;
        for (int j = 0; j < FEATURES; j++) {
            x[i][j] = uniform();
            if (x[i][j] > y[i][0]) y[i][0] = x[i][j];
        }
    }
}

/* one state tensor from the training memory into the prediction memory */
static void copy(double *to, const double *from, size_t count) {
    memcpy(to, from, count * sizeof(double));
}

int main(void) {
    void *train = aligned_alloc(64, mlp_train_mem_size());
    void *predict = aligned_alloc(64, mlp_predict_mem_size());
    if (!train || !predict) return 1;
    mlp_train_init(train);
    mlp_predict_init(predict);

    double x[BATCH][FEATURES], y[BATCH][1], loss, prediction[BATCH][1];
    for (int step = 1; step <= STEPS; step++) {
        batch(x, y);
        mlp_train_run(train, &x[0][0], &y[0][0], &loss);
        if (step <= 3 || step % 250 == 0) printf("step %3d  loss %.6f\n", step, loss);
    }

    /* the predictor has its own memory: give it the trained weights */
    copy(mlp_predict_state_mlp_dense1_w(predict), mlp_train_state_mlp_dense1_w(train), 5 * 16);
    copy(mlp_predict_state_mlp_dense1_b(predict), mlp_train_state_mlp_dense1_b(train), 16);
    copy(mlp_predict_state_mlp_dense2_w(predict), mlp_train_state_mlp_dense2_w(train), 16);
    copy(mlp_predict_state_mlp_dense2_b(predict), mlp_train_state_mlp_dense2_b(train), 1);

    batch(x, y);
    mlp_predict_run(predict, &x[0][0], &prediction[0][0]);
    printf("adam steps taken: %.0f\n", *mlp_train_state_adam_t(train));
    for (int i = 0; i < 4; i++)
        printf("max(% .3f % .3f % .3f % .3f % .3f) = % .3f, predicted % .3f\n", x[i][0], x[i][1],
               x[i][2], x[i][3], x[i][4], y[i][0], prediction[i][0]);
    free(train);
    free(predict);
    return 0;
}
