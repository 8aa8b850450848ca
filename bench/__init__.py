"""The tools that measure and check, apart from the model.

- `speed`: `longlive bench`, the generator's speed with random weights at any size;
- `kernel_speed`: each Triton kernel beside the best torch path, at a config's sizes;
- `compile_report`: a kernel launch compiled for a GPU this machine lacks, and what it needs;
- `kernel_check`: `longlive kernels`, the compile report over a whole generator block;
- `gpu.sh`: all of it on a GPU machine, in one command.

They import `streaming` and `kernels` (and torch, triton) but nothing of the server, so they
run on GPU machines that have no aiortc or PyAV (`recorder_speed` alone writes video, through
`studio.videofile`, and imports PyAV only when it runs); nothing in the model imports them.
"""
