/* Classify scikit-learn's test digits with the CNN that examples/digits_cnn.py trained and
 * exported -- no Python involved.
 *
 *   make            # trains and exports (python ../digits_cnn.py --export build), builds ./build/main
 *   make run        # ./build/main build/digits_test.bin
 *
 * digits_test.bin: an int32 count n, then n images of 8x8 float32 pixels in [0, 1], then n
 * uint8 labels (written by digits_cnn.py's export, in this machine's byte order).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "digits_cnn.h"

enum { PIXELS = 64, CLASSES = 10 };

static int argmax(const float *values, int count) {
    int best = 0;
    for (int i = 1; i < count; i++)
        if (values[i] > values[best]) best = i;
    return best;
}

/* one digit as text, darker pixels as denser characters */
static void draw(const float *image) {
    const char *shades = " .:-=+*#%@";
    for (int row = 0; row < 8; row++) {
        for (int column = 0; column < 8; column++) {
            int shade = (int)(image[row * 8 + column] * 9.0f + 0.5f);
            putchar(shades[shade < 0 ? 0 : shade > 9 ? 9 : shade]);
            putchar(shades[shade < 0 ? 0 : shade > 9 ? 9 : shade]);
        }
        putchar('\n');
    }
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "build/digits_test.bin";
    FILE *file = fopen(path, "rb");
    if (!file) {
        perror(path);
        return 1;
    }
    int32_t count = 0;
    if (fread(&count, sizeof count, 1, file) != 1 || count <= 0) {
        fprintf(stderr, "%s: no digit count\n", path);
        return 1;
    }
    float *images = malloc((size_t)count * PIXELS * sizeof(float));
    uint8_t *labels = malloc((size_t)count);
    void *mem = aligned_alloc(64, digits_cnn_mem_size());
    if (!images || !labels || !mem) return 1;
    if (fread(images, sizeof(float) * PIXELS, (size_t)count, file) != (size_t)count ||
        fread(labels, 1, (size_t)count, file) != (size_t)count) {
        fprintf(stderr, "%s: truncated\n", path);
        return 1;
    }
    fclose(file);

    digits_cnn_init(mem); /* the trained weights and running statistics, as exported */
    float logits[CLASSES];
    int right = 0, shown = 0;
    for (int i = 0; i < count; i++) {
        digits_cnn_run(mem, images + (size_t)i * PIXELS, logits);
        int predicted = argmax(logits, CLASSES);
        right += predicted == labels[i];
        if (shown < 2 && (i == 0 || predicted != labels[i])) {
            draw(images + (size_t)i * PIXELS);
            printf("digit %d: label %d, predicted %d\n\n", i, labels[i], predicted);
            shown++;
        }
    }
    printf("%d of %d test digits right: accuracy %.4f\n", right, count, (double)right / count);
    free(images);
    free(labels);
    free(mem);
    return 0;
}
