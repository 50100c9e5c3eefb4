"""Makes batches ahead of the training loop in a background thread."""
import queue
import threading


def background(make_batch, start: int, size: int = 2):
  """Yields make_batch(start), make_batch(start + 1), ... computed ahead."""
  q = queue.Queue(maxsize=size)
  stop = threading.Event()

  def work():
    i = start
    while not stop.is_set():
      try:
        item = (make_batch(i), None)
      except Exception as e:  # Re-raised in the consumer.
        item = (None, e)
      while not stop.is_set():
        try:
          q.put(item, timeout=0.1)
          break
        except queue.Full:
          pass
      if item[1] is not None:
        return
      i += 1

  threading.Thread(target=work, daemon=True).start()
  try:
    while True:
      batch, error = q.get()
      if error is not None:
        raise error
      yield batch
  finally:
    stop.set()
