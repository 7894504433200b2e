"""A stand-in for the ``bsub`` package (PyPI), for training scripts of the hypnettorch era.

Written for hpsearch (no code or text taken from the bsub package); standard library only,
CPython 3.6+. It offers the part of that package's API such scripts use, with the same names,
and submits, watches and kills LSF jobs through hpsearch.py's own LSF code (``Lsf``,
``run_scheduler``), so hpsearch and the scripts it starts talk to LSF the same way.

Put the folder holding this file on the module path (``PYTHONPATH=/path/to/hpsearch/_vendor``)
and keep hpsearch.py in the folder above it::

    from bsub import bsub
    job = bsub("job_name", R="rusage[mem=8000]", n=1, W="4:00", o="out.log", e="err.log",
               verbose=True)
    job("python train.py --lr=0.1")        # submits; job.job_id is LSF's job id ('123')
    job.job_id in bsub.running_jobs()       # True while it is pending or running
    bsub.poll(job.job_id)                   # waits until it has ended
    job.then("python evaluate.py")          # runs after it is done (bsub -w 'done(123)')

Keyword arguments become bsub options: ``R=...`` -> ``-R ...``, ``n=1`` -> ``-n 1``,
``x=True`` -> ``-x``; False or None leaves the option out, a list repeats it. An enclosing
pair of double quotes is removed from a value (``R='"rusage[mem=8000]"'`` -> ``-R
rusage[mem=8000]``), as the shell did when such values were pasted into a command line.
The command is one shell command line (LSF runs it with /bin/sh), so quote what needs quoting.
A failure of bsub, bjobs or bkill raises ``SchedulerError`` (``hpsearch.SchedulerError``).
"""

import argparse
import shlex
import subprocess
import sys
import time

HPSEARCH_STAND_IN = True   # tells this module apart from the PyPI package

__all__ = ["bsub", "SchedulerError"]

POLL_INTERVAL = 10.0       # seconds between two queue checks of bsub.poll()


try:  # imported as _vendor.bsub, or with _vendor on the module path
    from ._hpsearch_link import load_hpsearch
except ImportError:
    from _hpsearch_link import load_hpsearch

_hpsearch = load_hpsearch('Lsf', 'bsub')
SchedulerError = _hpsearch.SchedulerError

# hpsearch's LSF backend builds the bjobs/bkill command lines and reads their answers; it
# needs only the flags below from a parsed hpsearch command line.
_LSF = _hpsearch.Lsf(argparse.Namespace(scheduler_args="", resources="", num_hours=24))
_NO_JOBS = ("No job found", "No unfinished job found")


def _ids(job_ids):
    """One id or several (str, int, or an iterable of them) -> a list of str."""
    if isinstance(job_ids, (str, int)):
        return [str(job_ids)]
    return [str(j) for j in job_ids]


def _query(job_ids):
    """``{job id or 'id[index]': (state, detail)}`` from one bjobs call (``bjobs -a``: pending,
    running and recently finished jobs); all of the user's jobs when ``job_ids`` is empty.
    SchedulerError when bjobs fails or says something hpsearch cannot read."""
    code, out, err = _hpsearch.run_scheduler(_LSF.query_argv(job_ids))
    if code != 0 and not out.strip() and any(m in err for m in _NO_JOBS):
        return {}   # LSB_BJOBS_CONSISTENT_EXIT_CODE=Y: 'nothing there' is exit 255
    return _LSF.parse_query(code, out, err)


def _matches(listed_id, wanted):
    """Whether ``listed_id`` ('123' or '123[4]') is one of the wanted ids; a whole array's id
    matches each of its elements."""
    return listed_id in wanted or listed_id.split("[")[0] in wanted


class bsub(object):
    """An LSF job to submit: ``bsub(job_name, [script], verbose=False, **options)``.

    Calling it with a command (a shell command line) submits that command; calling it without
    one submits the script given as second argument (its text is handed to bsub on stdin, so
    ``#BSUB`` lines in it count, as with ``bsub < script``). The call returns the object itself
    with ``job_id`` set to the id of the job just submitted (a string of digits); calling it
    again submits another job with the same options. ``job < 'run.sh'`` and
    ``'echo hi' | job`` are short forms of those two calls.
    """

    def __init__(self, job_name, *args, **kwargs):
        """``job_name``: bsub -J (a job array: ``'name[1-10]%2'``); ``args``: an optional
        script file; ``verbose``: print each bsub command line on stderr; every other keyword
        argument is a bsub option (see the module docstring)."""
        self.job_name = job_name
        self.args = args
        self.verbose = bool(kwargs.pop("verbose", False))
        self.kwargs = kwargs
        self.job_id = None
        self.command = None   # the command line submitted last
        self.script = None    # or the script file submitted last

    def options(self):
        """The bsub options of this job as a list of words (``-J`` first)."""
        words = ["-J", str(self.job_name)]
        for key, value in self.kwargs.items():
            flag = "-" + key.lstrip("-")
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if v is True:
                    words.append(flag)
                elif v is not None and v is not False:
                    words += [flag, _hpsearch.strip_shell_quotes(str(v))]
        return words

    def argv(self, command=None):
        """The bsub command line (a list) that submits ``command`` (None: the script, read
        from stdin)."""
        return ["bsub"] + self.options() + ([command] if command is not None else [])

    def __str__(self):
        """The bsub command line of the last submission (or of one without a command)."""
        line = " ".join(shlex.quote(w) for w in self.argv(self.command))
        return line + (" < " + shlex.quote(self.script) if self.script else "")

    def __repr__(self):
        return "<bsub %s job_id=%s>" % (self.job_name, self.job_id)

    def __call__(self, input_string=None):
        """Submit ``input_string`` (a shell command line), or the script file given to the
        constructor; returns ``self`` with ``job_id`` set. SchedulerError if bsub fails."""
        if input_string is not None:
            return self._submit(self.argv(input_string), None, input_string)
        if not self.args:
            raise ValueError("bsub(%r): nothing to submit; call it with a command or give a "
                             "script file as second argument" % self.job_name)
        return self < self.args[0]

    def __lt__(self, script_path):
        """``bsub('name') < 'run.sh'``: submit the script file (as ``bsub < run.sh``)."""
        with open(script_path) as f:
            text = f.read()
        return self._submit(self.argv(), text, script_path)

    def __ror__(self, command):
        """``'echo hello' | bsub('name')``: submit the command line."""
        return self(command)

    def _submit(self, argv, stdin_text, what):
        """Run bsub (``stdin_text``: a script's text for its stdin; ``what``: the command line
        or the script's path); set ``job_id``."""
        if self.verbose:
            sys.stderr.write("%s%s\n" % (" ".join(shlex.quote(w) for w in argv),
                                         " < " + shlex.quote(what) if stdin_text is not None
                                         else ""))
        env = _LSF.clean_env()   # our own LSB_* settings (when inside a job) stay here
        if stdin_text is None:
            code, out, err = _hpsearch.run_scheduler(argv, env=env)
        else:
            code, out, err = _run_with_input(argv, stdin_text, env)
        if code != 0:
            lines = (err or out).strip().splitlines()
            raise SchedulerError("bsub failed (exit %d): %s" % (code, lines[0] if lines else ""))
        try:
            self.job_id = _LSF.parse_submit(out)
        except ValueError as exc:
            raise SchedulerError(str(exc))
        if stdin_text is None:
            self.command, self.script = what, None
        else:
            self.command, self.script = None, what
        if self.verbose:
            sys.stderr.write("job <%s> submitted\n" % self.job_id)
        return self

    def then(self, input_string, job_name=None):
        """Submit ``input_string`` as a new job that LSF starts only after this one is done
        (``-w 'done(ID)'``), with the same options (and ``job_name`` if given). Returns the
        new job, so calls chain: ``job('a').then('b').then('c')``."""
        if self.job_id is None:
            raise ValueError("then(): submit this job first")
        kwargs = dict(self.kwargs)
        kwargs["w"] = "done(%s)" % self.job_id
        follower = bsub(job_name or self.job_name, verbose=self.verbose, **kwargs)
        return follower(input_string)

    def kill(self):
        """Kill the job submitted last (``bkill ID``); see ``bsub.bkill``."""
        if self.job_id is None:
            raise ValueError("kill(): nothing submitted yet")
        return bsub.bkill(self.job_id)

    @staticmethod
    def running_jobs(elements=False):
        """Ids (strings) of the user's jobs that LSF has not finished: pending, running or
        suspended. A job array counts while any element has not finished and is listed by its
        id; ``elements=True`` lists 'id[index]' for each such element instead. One bjobs call;
        SchedulerError when bjobs fails (then nothing is known about any job)."""
        found = []
        for listed, (state, _) in _query([]).items():
            if state != _hpsearch.JOB_ACTIVE:
                continue
            key = listed if elements else listed.split("[")[0]
            if key not in found:
                found.append(key)
        return found

    @staticmethod
    def poll(job_ids, interval=None, timeout=None):
        """Wait until each of ``job_ids`` (one id or a list; an array id covers its elements)
        has ended, done or not; a job LSF no longer lists counts as ended. Asks bjobs (one
        call for all of them) at once, then after 1, 2, 4, ... seconds, at most every
        ``interval`` seconds (default POLL_INTERVAL), so short jobs are noticed soon and long
        ones cost few calls; a failed bjobs call is asked again next time. Returns True, or
        False when ``timeout`` seconds passed first."""
        wanted = _ids(job_ids)
        longest = POLL_INTERVAL if interval is None else interval
        pause = min(1.0, longest)
        deadline = None if timeout is None else time.time() + timeout
        while True:
            try:
                listed = _query(wanted)
                if not any(state == _hpsearch.JOB_ACTIVE for job, (state, _) in listed.items()
                           if _matches(job, wanted)):
                    return True
            except SchedulerError:
                pass   # never take a failed query for an answer
            if deadline is not None and time.time() >= deadline:
                return False
            wait = pause if deadline is None else min(pause, max(0.0, deadline - time.time()))
            time.sleep(wait)
            pause = min(pause * 2, longest)

    @staticmethod
    def bkill(*job_ids):
        """Kill the given jobs (ids, 'id[index]' elements, or lists of them) in one bkill call:
        pending ones end at once, running ones are signalled by LSF. Returns True when bkill
        took every id, False when it refused some (unknown, or already finished)."""
        ids = []
        for j in job_ids:
            ids.extend(_ids(j))
        if not ids:
            return True
        # hpsearch's bkill line names whole jobs; an element ('123[4]') is named as it is
        argv = ["bkill"] + ids if any("[" in j for j in ids) else _LSF.cancel_argv(ids)
        code, _, _ = _hpsearch.run_scheduler(argv, env=_LSF.clean_env())
        return code == 0


def _run_with_input(argv, text, env, timeout=120):
    """``run_scheduler`` with ``text`` on stdin (bsub reads a script from stdin)."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, universal_newlines=True)
    except OSError as exc:
        raise SchedulerError("cannot run %s: %s" % (argv[0], exc.strerror))
    try:
        out, err = proc.communicate(text, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise SchedulerError("%s did not answer within %d s" % (argv[0], timeout))
    return proc.returncode, out, err


def main(argv=None):
    """``python -m bsub ID [ID ...]``: wait until those jobs have ended."""
    ids = list(sys.argv[1:] if argv is None else argv)
    if not ids:
        sys.stderr.write("usage: python -m bsub JOB_ID [JOB_ID ...]  (waits until they end)\n")
        return 2
    bsub.poll(ids)
    return 0


if __name__ == "__main__":
    sys.exit(main())
