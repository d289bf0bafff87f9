"""Build a small network with the DSL and print its IR before and after the training pipeline.

    python examples/quickstart.py
"""
import bngraph as bg

g = bg.Graph("mlp")
x = g.input("x", 64)                          # 64 features; the batch size m stays free
y = g.labels("y", 10)                         # integer class labels in [0, 10)
h = g.matmul(x, 128, bias=True, name="fc1")   # params fc1.W (128, 64) and fc1.b (128,)
h = g.batchnorm(h, name="bn1", eps=1e-5, momentum=0.1)
h = g.relu(h)
logits = g.matmul(h, 10, name="out")          # bias defaults to True
g.softmax_cross_entropy(logits, y)
print(g)                                      # the IR as text
assert bg.parse(str(g)) == g                  # and back

result = bg.run_pipeline(g, bg.TRAINING_PIPELINE, print_after=True)  # IR after each pass
print(result.format_report())                 # what each pass changed, and why
