"""Training tasks as plug-ins, one file each ending in one `register(...)` call, found by
`task:` in a stage's data sources through the `onellm.tasks` entry-point group (as a task
from another installed package is): caption, instruct, lm, clip (stage 0), sam and t2i
(the decoders' own pretraining), seg and gen (the output experts), sceneqa and sceneqa_lm
(spatial questions about several shapes). The contract is onellm/training/task.py."""
