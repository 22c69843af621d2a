from flax import nnx


class Net(nnx.Module):
    """An MLP as Flax's own examples write one: nnx.BatchNorm hard-coded, no bnlab."""

    def __init__(self, din: int, width: int = 64, num_classes: int = 10, *, rngs: nnx.Rngs):
        self.fc1, self.bn1 = nnx.Linear(din, width, rngs=rngs), nnx.BatchNorm(width, rngs=rngs)
        self.fc2, self.bn2 = nnx.Linear(width, width, rngs=rngs), nnx.BatchNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        x = nnx.relu(self.bn1(self.fc1(x)))
        return self.head(nnx.relu(self.bn2(self.fc2(x))))
